import CSystem
import Glibc

/// An eventfd a background thread sleeps on (with a time-out) and other threads poke: the
/// usage sinks' and the webhook endpoints' delivery threads.
struct WakeFD {
    let fd: Int32

    init() { fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }

    func close() { if fd >= 0 { Glibc.close(fd) } }

    func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Sleeps until poked or `ms` pass, then clears the pokes.
    func wait(_ ms: Int32) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, ms)
        var counter: UInt64 = 0
        _ = Glibc.read(fd, &counter, 8)
    }
}
