# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Baselines for the ``raised()`` benchmark, compiled by the runner with the same
directives as ``leadership/_clock.pyx``.

``Noop.noop()`` is the call floor: the cheapest method call of an extension type.
``ClockCheck.check()`` reads the suspend-safe clock and compares it with a deadline:
the physical floor of a lease check, with no library code around it.
"""

cdef extern from *:
    """
    #include <time.h>
    #ifdef CLOCK_BOOTTIME
    #define BASELINE_CLOCK CLOCK_BOOTTIME
    #else
    #define BASELINE_CLOCK CLOCK_MONOTONIC
    #endif
    static inline long long baseline_now_ns(void) {
        struct timespec ts;
        clock_gettime(BASELINE_CLOCK, &ts);
        return (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec;
    }
    """
    long long baseline_now_ns() nogil


cdef class Noop:
    """An extension type whose method does nothing."""

    def noop(self):
        """Do nothing; return None."""
        pass


cdef class ClockCheck:
    """Compares the suspend-safe clock with a deadline, nothing else."""

    cdef long long _deadline_ns

    def __cinit__(self):
        self._deadline_ns = 0

    def set_deadline(self, long long deadline_ns):
        """Set the deadline (clock nanoseconds)."""
        self._deadline_ns = deadline_ns

    def check(self):
        """True while the clock is before the deadline."""
        return baseline_now_ns() < self._deadline_ns


def now_ns():
    """The clock ``ClockCheck`` reads, in nanoseconds."""
    return baseline_now_ns()
