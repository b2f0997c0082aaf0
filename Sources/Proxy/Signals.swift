import CSystem
import Glibc

/// Signals are blocked in every thread and taken by the main thread with `sigwait`.
enum Signals {
    static func blockForAllThreads() {
        signal(SIGPIPE, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits for SIGTERM, SIGINT or SIGHUP; returns which.
    static func wait() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        var sig: Int32 = 0
        while sigwait(&set, &sig) != 0 {}
        return sig
    }
}
