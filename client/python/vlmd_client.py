"""A small Python client for vlmd, the local vision-language model daemon.

It speaks the daemon's msgpack-RPC protocol (proto/PROTOCOL.md) over its Unix socket and needs only the PyPI
package ``msgpack``::

    from vlmd_client import Client

    with Client() as c:                      # $VLMD_SOCKET, else /run/vlmd/vlmd.sock
        png = open("cat.png", "rb").read()
        for piece in c.ask_stream("What is in the picture?", images=[png], temperature=0):
            print(piece, end="", flush=True)
        print()
        print(c.last_result["tokens_generated"], "tokens")

A ``Client`` is one connection; use it from one thread at a time (open one per thread).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import msgpack

__version__ = "0.1.0"

PROTOCOL_VERSION = 1
PROTOCOL_VERSION_MIN = 1
DEFAULT_SOCKET = "/run/vlmd/vlmd.sock"
# What this client accepts from the daemon in one message (the daemon's own limit for requests is in
# Client.server["limits"]).
MAX_MESSAGE = 1 << 30

_REQUEST, _RESPONSE, _NOTIFY = 0, 1, 2
_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed",
             "stop")
_COMPONENTS = ("encoder", "projector", "llm")
_CANCEL_GRACE = 5.0


class VlmdError(Exception):
    """An error reply from the daemon (``code`` and ``name`` are the protocol's stable error codes, e.g.
    6 / "BUSY"), or a client-side failure (code 0)."""

    def __init__(self, message: str, code: int = 0, name: str = "CLIENT"):
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.code else self.message


class ConnectError(VlmdError):
    """The daemon cannot be reached (not running, no permission) or closed the connection."""


class Cancelled(VlmdError):
    """The request was cancelled (by the caller, or the daemon's CANCELLED error)."""


class Timeout(VlmdError):
    """No answer in time; an ask or load was cancelled on the daemon."""


def default_socket() -> str:
    """$VLMD_SOCKET when set, else the system service's socket."""
    return os.environ.get("VLMD_SOCKET") or DEFAULT_SOCKET


class Client:
    """One connection to vlmd.

    path: socket path (None: default_socket()). timeout: default deadline in seconds for every call (None: no
    deadline). connect_timeout: seconds for connect + hello.
    """

    def __init__(self, path: Optional[str] = None, timeout: Optional[float] = None, connect_timeout: float = 5.0,
                 client_name: str = f"vlmd_client.py {__version__}"):
        self.path = path or default_socket()
        self.timeout = timeout
        self.last_result: Optional[Dict[str, Any]] = None
        self._next_id = 1
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE, strict_map_key=False)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._dead: Optional[str] = None
        self.server: Dict[str, Any] = {}
        try:
            self._sock.settimeout(connect_timeout)
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self._sock.close()
            raise ConnectError(
                f"cannot connect to vlmd at {self.path}: {e.strerror}. vlmd is not running: start it with "
                f"'systemctl start vlmd.socket' or by hand with 'vlmd --socket {self.path} --chain "
                f"default=MODEL.gguf'") from None
        except OSError as e:
            self._sock.close()
            raise ConnectError(f"cannot connect to vlmd at {self.path}: {e}") from None
        try:
            self.server = self._call(
                "hello", {"client": client_name, "protocol": PROTOCOL_VERSION}, timeout=connect_timeout)
        except BaseException:
            self._sock.close()
            raise
        proto = self.server.get("protocol")
        if not isinstance(proto, int) or not PROTOCOL_VERSION_MIN <= proto <= PROTOCOL_VERSION:
            self._sock.close()
            raise VlmdError(f"vlmd answered with protocol {proto}; this client speaks "
                            f"{PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION}")

    # ---- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (a request still running on the daemon is cancelled by the disconnect)."""
        try:
            self._sock.close()
        finally:
            self._dead = self._dead or "the connection is closed"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- methods ----------------------------------------------------------------------------------------------

    def ask(self, prompt: str, images: Iterable[bytes] = (), chain: Optional[str] = None,
            on_text: Optional[Callable[[str], Any]] = None,
            on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
            timeout: Optional[float] = None, **sampling: Any) -> Dict[str, Any]:
        """Asks one question and returns the result: {"text", "tokens_prompt", "tokens_generated",
        "stop_reason", "timings": {...}}.

        images: encoded image files (bytes of JPEG/PNG/WebP). on_text(piece) streams the answer as it is
        generated; returning True from it cancels the request (Cancelled is raised). on_progress(dict) gets
        {"id", "stage", "done", "total"} notifications. sampling: max_tokens, temperature, top_k, top_p,
        min_p, repeat_penalty, repeat_last_n, seed, stop (list of str).
        """
        params = self._ask_params(prompt, images, chain, on_text is not None, sampling)
        result = self._call("ask", params, on_text=on_text, on_progress=on_progress, timeout=timeout,
                            cancellable=True)
        self.last_result = result
        return result

    def ask_stream(self, prompt: str, images: Iterable[bytes] = (), chain: Optional[str] = None,
                   on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
                   timeout: Optional[float] = None, **sampling: Any) -> Iterator[str]:
        """Like ask(), as a generator of text pieces. The final result is in self.last_result once the
        generator is exhausted. Leaving the loop early (break, or closing the generator) cancels the request."""
        params = self._ask_params(prompt, images, chain, True, sampling)
        msgid = self._send("ask", params)
        deadline = self._deadline(timeout)
        finished = False
        try:
            while True:
                msg = self._read(deadline, msgid, cancellable=True)
                if msg[0] == _RESPONSE:
                    finished = True
                    self.last_result = self._result(msg)
                    return
                method, body = msg[1], _params_map(msg[2])
                if body.get("id") != msgid:
                    continue
                if method == "vlm.text":
                    yield body.get("text", "")
                elif method == "vlm.progress" and on_progress:
                    on_progress(body)
        finally:
            if not finished and not self._dead:
                # The consumer stopped early: cancel, and read up to the answer so the connection stays in step.
                try:
                    self._cancel_and_drain(msgid)
                except VlmdError:
                    pass

    def status(self) -> Dict[str, Any]:
        """{"version", "protocol", "uptime", "clients", "queue": {"length", "capacity"}, "requests_total",
        "workers": [{"device", "busy", "request"?, "chain"?}]}"""
        return self._call("status", None)

    def chains(self) -> List[Dict[str, Any]]:
        """[{"name", "template"?, "encoder"?/"projector"?/"llm"?: {"plugin"?, "model"?, "loaded"}, "active"}]"""
        return self._call("chains", None).get("chains", [])

    def plugins(self) -> List[Dict[str, Any]]:
        """[{"name", "kind", "version", "file", "abi", "instances"}]"""
        return self._call("plugins", None).get("plugins", [])

    def load(self, chain: str, component: Optional[str] = None, plugin: Optional[str] = None,
             model: Optional[str] = None, on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """Loads a chain's components (all, or one of "encoder", "projector", "llm"); returns the chain."""
        return self._call("load", _component_params(chain, component, plugin, model), on_progress=on_progress,
                          timeout=timeout, cancellable=True)

    def unload(self, chain: str, component: Optional[str] = None) -> Dict[str, Any]:
        """Frees a chain's components (running requests keep theirs); returns the chain."""
        return self._call("unload", _component_params(chain, component, None, None))

    def swap(self, chain: str, component: str, model: str, plugin: Optional[str] = None,
             on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """Replaces one component of a chain (loaded first, switched in one step); returns the chain."""
        if component not in _COMPONENTS:
            raise ValueError(f"component must be one of {_COMPONENTS}")
        return self._call("swap", _component_params(chain, component, plugin, model), on_progress=on_progress,
                          timeout=timeout, cancellable=True)

    # ---- protocol ---------------------------------------------------------------------------------------------

    def _ask_params(self, prompt: str, images: Iterable[bytes], chain: Optional[str], stream: bool,
                    sampling: Dict[str, Any]) -> Dict[str, Any]:
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a str")
        unknown = set(sampling) - set(_SAMPLING)
        if unknown:
            raise TypeError(f"unknown ask option(s): {', '.join(sorted(unknown))} (known: {', '.join(_SAMPLING)})")
        params: Dict[str, Any] = {"prompt": prompt}
        imgs = [bytes(i) for i in images]
        if imgs:
            params["images"] = imgs
        if chain is not None:
            params["chain"] = chain
        if stream:
            params["stream"] = True
        for k, v in sampling.items():
            if v is not None:
                params[k] = list(v) if k == "stop" else v
        return params

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        t = timeout if timeout is not None else self.timeout
        return time.monotonic() + t if t else None

    def _send(self, method: str, params: Optional[Dict[str, Any]]) -> int:
        if self._dead:
            raise ConnectError(f"vlmd connection unusable: {self._dead}")
        msgid = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFFFFFF else 1
        data = msgpack.packb([_REQUEST, msgid, method, [params] if params is not None else []], use_bin_type=True)
        limit = (self.server.get("limits") or {}).get("max_message")
        if limit and len(data) > limit:
            raise VlmdError(f"{method}: the request has {len(data)} bytes; vlmd takes at most {limit}")
        try:
            self._sock.settimeout(None)
            self._sock.sendall(data)
        except OSError as e:
            self._dead = str(e)
            raise ConnectError(f"vlmd closed the connection: {e}") from None
        return msgid

    def _read(self, deadline: Optional[float], msgid: int, cancellable: bool) -> list:
        """The next message that concerns `msgid`: its response, or a notification (the caller filters ids).
        On timeout, cancellable requests are cancelled (Timeout raised once the daemon answers)."""
        while True:
            for msg in self._unpacker:
                if not isinstance(msg, list) or not msg:
                    continue
                if msg[0] == _RESPONSE and len(msg) == 4:
                    if msg[1] == msgid:
                        return msg
                    continue  # the answer to a cancel, or to a call that timed out earlier
                if msg[0] == _NOTIFY and len(msg) == 3:
                    if msg[1] == "vlm.error":
                        err = _params_map(msg[2])
                        self._dead = err.get("message", "vlm.error")
                        raise ConnectError(err.get("message", "connection error"), err.get("code", 18),
                                           err.get("name", "INTERNAL"))
                    return msg
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    if cancellable:
                        self._cancel_and_drain(msgid)
                    raise Timeout("no answer from vlmd in time", 17, "TIMEOUT")
            self._sock.settimeout(wait)
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                self._dead = str(e)
                raise ConnectError(f"reading from vlmd: {e}") from None
            if not data:
                self._dead = "closed by vlmd"
                raise ConnectError("vlmd closed the connection")
            try:
                self._unpacker.feed(data)
            except msgpack.BufferFull:
                self._dead = "message too large"
                raise ConnectError("vlmd sent a message larger than this client accepts") from None

    def _cancel_and_drain(self, msgid: int) -> None:
        self._send("cancel", {"id": msgid})
        deadline = time.monotonic() + _CANCEL_GRACE
        while True:
            msg = self._read(deadline, msgid, cancellable=False)
            if msg[0] == _RESPONSE:
                return

    def _result(self, msg: list) -> Any:
        err = msg[2]
        if err is not None:
            if not isinstance(err, dict):
                raise VlmdError(f"malformed error reply: {err!r}")
            code, name, text = err.get("code", 18), err.get("name", "INTERNAL"), err.get("message", "")
            cls = Cancelled if code == 7 else Timeout if code == 17 else VlmdError
            raise cls(text, code, name)
        return msg[3]

    def _call(self, method: str, params: Optional[Dict[str, Any]], on_text: Optional[Callable] = None,
              on_progress: Optional[Callable] = None, timeout: Optional[float] = None,
              cancellable: bool = False) -> Any:
        msgid = self._send(method, params)
        deadline = self._deadline(timeout)
        stopped = False
        while True:
            msg = self._read(deadline, msgid, cancellable)
            if msg[0] == _RESPONSE:
                return self._result(msg)
            if stopped:
                continue
            method_name, body = msg[1], _params_map(msg[2])
            if body.get("id") != msgid:
                continue
            if method_name == "vlm.text" and on_text is not None:
                if on_text(body.get("text", "")) is True:
                    stopped = True
                    self._send("cancel", {"id": msgid})
                    deadline = time.monotonic() + _CANCEL_GRACE
            elif method_name == "vlm.progress" and on_progress is not None:
                on_progress(body)


def _params_map(params: Any) -> Dict[str, Any]:
    """A notification's params: [map] or map."""
    if isinstance(params, list) and params and isinstance(params[0], dict):
        return params[0]
    return params if isinstance(params, dict) else {}


def _component_params(chain: str, component: Optional[str], plugin: Optional[str],
                      model: Optional[str]) -> Dict[str, Any]:
    if component is not None and component not in _COMPONENTS:
        raise ValueError(f"component must be one of {_COMPONENTS} or None")
    p: Dict[str, Any] = {"chain": chain}
    if component is not None:
        p["component"] = component
    if plugin is not None:
        p["plugin"] = plugin
    if model is not None:
        p["model"] = model
    return p
