"""WebRTC kept on loopback, and the audio plumbing of a call. No Django.

Loopback: aioice gathers a host candidate on every interface address but 127.0.0.1
(`aioice.ice.get_host_addresses`, which `Connection.gather_candidates` calls by name), and
aiortc's default ICE server is a public STUN server. A peer made by `new_peer_connection` has no
ICE servers, and `gather_loopback_only` makes the gathering done inside it (in this task and the
tasks it starts) use 127.0.0.1 alone: the module function is wrapped once, and the wrapper
answers from a context variable, so peers outside the block (and every process that never
enters it) gather as aioice always does. `loopback_sdp` drops the remote candidates that are
not loopback (other addresses, mDNS names) from an SDP before it is applied, so ICE never
checks them, and `create_local` makes each ICE connection of the peer ignore connectivity
checks arriving from an address that is not loopback (a browser gathering on every interface
could otherwise be learned as a peer-reflexive candidate there). The simulator does all this when `SimulatorConfig.ice_loopback_only` (the default: a
test and development tool on 127.0.0.1); `tests/support/webrtc.py`'s client does too.

Every SDP that passes through `apply_remote` and `create_local` is kept in `sdp_log` (the
latest few thousand, process-wide), so a test can assert that all of them are loopback-only.

Audio: `PCM_RATE` mono PCM16 is what a call's session takes and speaks (the service's
`audio/pcm`); `AgentAudioTrack` plays queued PCM in real time as 20 ms frames (silence when
there is nothing to say), and `FrameConverter` turns received frames into PCM at that rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import ipaddress
import time
from collections import deque
from collections.abc import Iterator

import aioice
import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

PCM_RATE = 24000
FRAME_MS = 20
_MAX_QUEUED_BYTES = PCM_RATE * 2 * 120  # two minutes of speech waiting to be played

sdp_log: deque[tuple[str, str]] = deque(maxlen=4096)  # (what, sdp): "offer"/"answer"

_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ice_loopback_only", default=False
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback_only.get():
        return ["127.0.0.1"] if use_ipv4 else []
    return _original_get_host_addresses(use_ipv4, use_ipv6)


aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def gather_loopback_only(enabled: bool = True) -> Iterator[None]:
    """ICE gathering inside the block (and in tasks started from it) uses 127.0.0.1 only."""
    token = _loopback_only.set(enabled)
    try:
        yield
    finally:
        _loopback_only.reset(token)


def new_peer_connection() -> RTCPeerConnection:
    """A peer with no ICE servers (aiortc's default asks a public STUN server)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (mDNS `….local`, a host name): never resolved here


def candidate_hosts(sdp: str) -> list[str]:
    """The connection address of every `a=candidate` line."""
    hosts = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 4:
                hosts.append(fields[4])
    return hosts


def loopback_sdp(sdp: str) -> str:
    """`sdp` without its candidates that are not on a loopback address."""
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) <= 4 or not is_loopback(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


async def apply_remote(
    pc: RTCPeerConnection, sdp: str, kind: str, *, loopback_only: bool
) -> None:
    """Set the remote description (an "offer" or "answer"), its non-loopback candidates
    dropped first when `loopback_only`."""
    sdp_log.append((kind, sdp))
    if loopback_only:
        sdp = loopback_sdp(sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))


async def create_local(pc: RTCPeerConnection, kind: str, *, loopback_only: bool) -> str:
    """Create and set the local "offer" or "answer" (gathering candidates); returns its SDP."""
    with gather_loopback_only(loopback_only):
        description = await (pc.createOffer() if kind == "offer" else pc.createAnswer())
        await pc.setLocalDescription(description)
    if loopback_only:
        for connection in _ice_connections(pc):
            _ignore_checks_from_elsewhere(connection)
    sdp = pc.localDescription.sdp
    sdp_log.append((kind, sdp))
    return sdp


def _ice_connections(pc: RTCPeerConnection) -> list[aioice.Connection]:
    """The aioice connections under a peer's transports (aiortc keeps each in its gatherer's
    `_connection`; there is no public way to reach it)."""
    dtls = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    found: list[aioice.Connection] = []
    for transport in dtls:
        connection = getattr(transport.transport.iceGatherer, "_connection", None) if transport else None
        if connection is not None and connection not in found:
            found.append(connection)
    return found


def _ignore_checks_from_elsewhere(connection: aioice.Connection) -> None:
    """STUN requests from a non-loopback address are dropped unanswered: no peer-reflexive
    candidate is learned there, no check is sent back."""
    if getattr(connection, "_oc_loopback_guard", False):
        return
    handle = connection.request_received

    def request_received(message, addr, protocol) -> None:  # noqa: ANN001  (aioice's types)
        if is_loopback(addr[0]):
            handle(message, addr, protocol)

    connection.request_received = request_received  # type: ignore[method-assign]
    connection._oc_loopback_guard = True  # type: ignore[attr-defined]


class PacedAudioTrack(MediaStreamTrack):
    """An outgoing mono PCM16 audio track that hands out one 20 ms frame each 20 ms of real
    time (what a microphone or a speaker does); subclasses say what each frame holds."""

    kind = "audio"

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self.samples_per_frame = rate * FRAME_MS // 1000
        self._start: float | None = None
        self._pts = 0

    async def next_frame_time(self) -> int:
        """Wait until the next frame is due; returns its time in samples since the first."""
        if self.readyState != "live":
            raise MediaStreamError()
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.samples_per_frame
            wait = self._start + self._pts / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self._pts

    def frame(self, pcm: bytes) -> av.AudioFrame:
        """A frame of `pcm` (padded with silence to a whole frame) at the current time."""
        size = self.samples_per_frame * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples_per_frame)
        frame.planes[0].update(pcm[:size] + bytes(size - len(pcm[:size])))
        frame.pts = self._pts
        frame.sample_rate = self.rate
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


class AgentAudioTrack(PacedAudioTrack):
    """An outgoing audio track: queued PCM16 (mono, `PCM_RATE`) played in real time."""

    def __init__(self) -> None:
        super().__init__(PCM_RATE)
        self._queue = bytearray()
        self.played_bytes = 0  # speech (not silence) sent so far
        self.drained = asyncio.Event()  # set while nothing is queued (`output_audio_buffer`)
        self.drained.set()

    def play(self, pcm: bytes) -> None:
        if pcm and len(self._queue) + len(pcm) <= _MAX_QUEUED_BYTES:
            self._queue += pcm
            self.drained.clear()

    def clear(self) -> None:
        self._queue.clear()
        self.drained.set()

    @property
    def queued_bytes(self) -> int:
        return len(self._queue)

    async def recv(self) -> av.AudioFrame:
        await self.next_frame_time()
        size = self.samples_per_frame * 2
        chunk = bytes(self._queue[:size])
        del self._queue[:size]
        self.played_bytes += len(chunk)
        if not self._queue:
            self.drained.set()
        return self.frame(chunk)


class FrameConverter:
    """Received audio frames (any layout and rate) → mono PCM16 at `PCM_RATE`."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)

    def convert(self, frame: av.AudioFrame) -> bytes:
        return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame))

