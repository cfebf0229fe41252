"""Running the service: whether the web stack is installed (a missing piece is one line naming the extra),
the listening socket (bound before the server starts, so a taken port is a clear error and port 0 tells
which free one it got), and uvicorn, stopped by SIGTERM or Ctrl-C after answering the requests in progress."""
import importlib
import ipaddress
import signal
import socket

from ..errors import UserError

WEB_STACK = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}  # import: pip
BACKLOG = 2048  # uvicorn's
DRAIN_SECONDS = 30  # the most a stop waits for requests in progress (Kubernetes' default grace period)


def require_web_stack():
    missing = []
    for module, package in WEB_STACK.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise UserError(f"serving needs {', '.join(missing)}, not installed here: pip install -e '.[serve]'")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port, for uvicorn to serve on."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address this machine can serve on ({err.strerror}); "
                        "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None
    # The protocol named (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on such connections, and without it
    # a response's body waits for the client's delayed ACK of its headers (40 ms on Linux).
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)  # connections wait from now on, until uvicorn has started and accepts them
    except OSError as err:
        sock.close()
        raise UserError(f"cannot serve on {host} port {port} ({err.strerror}): pass another --port (0: any free "
                        "one) or --host") from None
    return sock


def address_line(sock: socket.socket) -> str:
    """Where the socket serves and who can reach it, in one line."""
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    if ipaddress.ip_address(host).is_loopback:
        return f"{url} (this machine only; --host 0.0.0.0 serves other machines too)"
    return f"{url} (open to every machine that can reach this one on port {port})"


def _drained(signum, frame):
    """SIGTERM once uvicorn has drained: nothing left to do, main returns and the process exits 0."""


def run(app, sock: socket.socket):
    """Serve `app` on `sock` until SIGTERM or Ctrl-C, then answer the requests in progress (at most
    DRAIN_SECONDS) and return. uvicorn raises the stop signal again once it has drained, under the handler
    that was there before it: for SIGTERM, _drained, so the stop is a clean exit; for SIGINT, Python's
    KeyboardInterrupt (the scripts exit 130)."""
    import uvicorn
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False,
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
