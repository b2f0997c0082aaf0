// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]
let hot: [SwiftSetting] = strict + [
    // Measured with callgrind (../shared/bench): the hot path crosses Runtime → Proxy for
    // every buffer write; cross-module optimisation lets those calls inline.
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
]

let package = Package(
    name: "tollgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tollgate", targets: ["Proxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Thin C wrappers: the Linux calls Glibc does not export, and the three libraries.
        .target(name: "CSystem", path: "Sources/CSystem"),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis", pkgConfig: "hiredis",
                       providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CNghttp2", path: "Sources/CNghttp2", pkgConfig: "libnghttp2",
                       providers: [.apt(["libnghttp2-dev"])]),

        // Event loop, buffers, timers, syscalls, the HTTP/1 codec (shared by Proxy and Backends).
        .target(name: "Runtime", dependencies: ["CSystem"], swiftSettings: hot),
        // Pure decisions: no I/O.
        .target(name: "Policy", dependencies: ["COpenSSL", "Yams"], swiftSettings: hot),
        // Everything behind the gate: upstream pools, Redis, sinks.
        .target(name: "Backends", dependencies: ["Runtime", "Policy", "CHiredis", "COpenSSL", "CSystem"],
                swiftSettings: hot),
        // The reference backends of the seeds (`tollgate backends`, tests, demos): not the product.
        .target(name: "ReferenceBackends", dependencies: ["Runtime", "COpenSSL", "CSystem"], swiftSettings: strict),
        // The proxy and the CLI (`tollgate`).
        .executableTarget(name: "Proxy", dependencies: [
            "Runtime", "Policy", "Backends", "ReferenceBackends", "COpenSSL", "CNghttp2",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: hot),

        .testTarget(name: "RuntimeTests", dependencies: ["Runtime"], swiftSettings: strict),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "COpenSSL"], swiftSettings: strict),
        .testTarget(name: "BackendsTests", dependencies: ["Backends", "Runtime", "Policy"], swiftSettings: strict),
        .testTarget(name: "ReferenceBackendsTests", dependencies: ["ReferenceBackends", "Runtime"], swiftSettings: strict),
        .testTarget(name: "ProxyTests", dependencies: ["Proxy", "Runtime", "Policy", "Backends", "ReferenceBackends", "COpenSSL"],
                    swiftSettings: strict),
    ]
)
