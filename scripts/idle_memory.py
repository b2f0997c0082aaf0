import socket, sys, time, resource, os
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
pid=int(sys.argv[1]); n=int(sys.argv[2])
def rss(): 
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
base=rss(); socks=[]
for i in range(n):
    s=socket.create_connection(("127.0.0.1",7390)); socks.append(s)
time.sleep(2.5)
after=rss()
print(f"idle: {n} connections: RSS {base} kB -> {after} kB: +{(after-base)/1024:.1f} MiB, {(after-base)*1024/n:.0f} bytes/conn")
# now make each send one request and stay idle (keep-alive)
for s in socks: s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
for s in socks:
    d=b""
    while b"\r\n\r\n" not in d: d+=s.recv(4096)
time.sleep(2.5)
after2=rss()
print(f"after one request each (keep-alive idle): RSS {after2} kB: +{(after2-base)/1024:.1f} MiB over start")
