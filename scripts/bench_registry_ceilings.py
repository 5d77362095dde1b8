"""Upload ceilings for scripts/bench_registry.py and scripts/bench_upload.py: how fast the
same bytes reach a synced file on this machine without any server."""
import hashlib
import http.client
import os
import queue
import socket
import threading
import time
import urllib.parse


def put_artifact(base, exp, run, name, blob):
    """Seconds for one upload of `blob` as artifact `name` of a run, through MLflow's
    `mlflow-artifacts` proxy route (both servers serve it), on a fresh connection."""
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    start = time.perf_counter()
    c.request("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts/{name}",
              body=blob, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        raise SystemExit(f"upload to {base}: {r.status}")
    return time.perf_counter() - start


def file_sync(blob, scratch):
    """Seconds to write the bytes to a file and fsync it."""
    path = os.path.join(scratch, "disk-ceiling.bin")
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    took = time.perf_counter() - t
    os.remove(path)
    return took


def socket_to_disk(blob, scratch, checksum=False):
    """Seconds for the same bytes to cross a loopback TCP connection into a synced file: the
    ceiling of any HTTP upload on this machine, with no HTTP and no server. With `checksum`,
    each 1 MiB chunk is also SHA-256 hashed on a second thread while the next is received and
    written, as a server recording a checksum per file must (hashlib and the socket and file
    calls release the GIL, so the three overlap as in a native server)."""
    done = []
    path = os.path.join(scratch, "socket-ceiling.bin")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def receive():
        conn, _ = listener.accept()
        chunks = queue.Queue(maxsize=8)
        digest = hashlib.sha256()

        def hash_chunks():
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)

        hasher = threading.Thread(target=hash_chunks)
        if checksum:
            hasher.start()
        buf = memoryview(bytearray(1 << 20))
        left = len(blob)
        with open(path, "wb") as f:
            while left:
                if checksum:
                    # A fresh chunk each time: the hasher still reads the previous one.
                    chunk = bytearray(min(1 << 20, left))
                    view, got = memoryview(chunk), 0
                    while got < len(chunk):
                        n = conn.recv_into(view[got:])
                        if not n:
                            break
                        got += n
                    f.write(view[:got])
                    chunks.put(chunk)
                    left -= got
                    if got < len(chunk):
                        break
                    continue
                n = conn.recv_into(buf, min(len(buf), left))
                if not n:
                    break
                f.write(buf[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())
        if checksum:
            chunks.put(None)
            hasher.join()
            digest.hexdigest()
        conn.sendall(b"ok")
        conn.close()
        done.append(time.perf_counter())

    receiver = threading.Thread(target=receive)
    receiver.start()
    client = socket.create_connection(listener.getsockname())
    t = time.perf_counter()
    client.sendall(blob)
    client.recv(2)
    receiver.join()
    client.close()
    listener.close()
    os.remove(path)
    return done[0] - t
