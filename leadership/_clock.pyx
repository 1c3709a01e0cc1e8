# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled lease clock, lease and jitter: the hot path of ``Flag.raised()``.

Same API as :mod:`leadership._clock_py`. ``raised()`` reads the clock once,
compares two integers and returns a shared bool: no allocation, no lock.
"""

from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    #include <time.h>
    #ifdef CLOCK_BOOTTIME
    #define LEADERSHIP_LEASE_CLOCK CLOCK_BOOTTIME
    #else
    #define LEADERSHIP_LEASE_CLOCK CLOCK_MONOTONIC
    #endif
    static inline long long leadership_now_ns(void) {
        struct timespec ts;
        clock_gettime(LEADERSHIP_LEASE_CLOCK, &ts);
        return (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec;
    }
    """
    long long leadership_now_ns() nogil

import os

IMPLEMENTATION = "compiled"

cdef uint64_t _state = 0


cdef inline uint64_t _next_random() noexcept:
    """xorshift64*: fast, good enough for spreading timers (not for secrets)."""
    global _state
    _state ^= _state >> 12
    _state ^= _state << 25
    _state ^= _state >> 27
    return _state * <uint64_t>2685821657736338717ULL


def _seed() -> None:
    """Reseed the jitter generator from the OS (also called in a forked child)."""
    global _state
    _state = int.from_bytes(os.urandom(8), "little") | 1


_seed()
os.register_at_fork(after_in_child=_seed)


def now_ns() -> int:
    """Read the lease clock (CLOCK_BOOTTIME, else CLOCK_MONOTONIC) in nanoseconds."""
    return leadership_now_ns()


def jittered(double seconds, double jitter) -> float:
    """Return ``seconds`` scaled by a uniform random factor in ``[1 - jitter, 1 + jitter]``."""
    cdef double unit = (_next_random() >> 11) * (1.0 / 9007199254740992.0)
    return seconds * (1.0 + jitter * (2.0 * unit - 1.0))


cdef class Lease:
    """A local lease deadline on the lease clock.

    ``raised()`` is True only while the lease clock is before the deadline. A new
    lease is lowered. The deadline is changed only by ``_extend`` and ``_lower``.
    """

    cdef int64_t _deadline_ns

    def __cinit__(self):
        self._deadline_ns = 0

    def raised(self):
        """Return True while the lease clock is before the deadline; never blocks or raises."""
        return leadership_now_ns() < self._deadline_ns

    def lease_remaining(self):
        """Seconds left before the deadline, 0.0 when lowered."""
        cdef int64_t left = self._deadline_ns - leadership_now_ns()
        return left / 1e9 if left > 0 else 0.0

    def _extend(self, int64_t start_ns, int64_t duration_ns):
        """Set the deadline to ``start_ns + duration_ns`` (lease-clock nanoseconds)."""
        self._deadline_ns = start_ns + duration_ns

    def _lower(self):
        """Drop the deadline: ``raised()`` is False from now on until the next ``_extend``."""
        self._deadline_ns = 0

    @property
    def _deadline(self):
        """The deadline in lease-clock nanoseconds (0 when never raised)."""
        return self._deadline_ns
