import Testing
@testable import Runtime

/// A write that does not fit never traps: it is dropped and flagged, and the message's writer
/// fails that exchange instead of the process (the huge-Host crash was a precondition here).
struct IOBufferTests {
    @Test func writesPastCapacityAreDroppedAndFlagged() {
        let b = IOBuffer(capacity: 8)
        b.write(Array("12345".utf8))
        #expect(!b.isOverflowed)
        b.write(Array("6789".utf8))          // 4 more do not fit in the 3 left
        #expect(b.isOverflowed)
        #expect(b.readableBytes == 5)        // nothing partial was written
        b.write(byte: 0x36); b.write(byte: 0x37); b.write(byte: 0x38)
        b.write(byte: 0x39)                  // the 9th byte
        #expect(b.readableBytes == 8)
        b.write(decimal: 12345)
        b.write(hex: 0xABCDEF)
        b.write("static")
        #expect(b.readableBytes == 8)
        #expect(Array(b.readable) == Array("12345678".utf8))
        b.clear()
        #expect(!b.isOverflowed)
    }

    @Test func lentStorageComesAndGoes() {
        let b = IOBuffer()
        #expect(!b.hasStorage && b.writableBytes == 0)
        b.write(byte: 1)
        #expect(b.isOverflowed && b.readableBytes == 0)
        let block = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
        defer { block.deallocate() }
        b.attachStorage(block, capacity: 64)
        #expect(b.hasStorage && b.writableBytes == 64 && !b.isOverflowed)
        b.write(Array("hello".utf8))
        #expect(b.readableBytes == 5)
        b.detachStorage()
        #expect(!b.hasStorage && b.readableBytes == 0 && b.writableBytes == 0)
    }
}
