"""An in-process simulator of the OpenAI Realtime service (GA protocol): the embedded upstream.

A whole second service, split by concern:

- `server`: the WebSocket server, handshakes, connections, and the public API
  (`Simulator`, `SimulatorConfig`, `event_sent_time_ns`, `new_event_id`);
- `session`: the session protocol (session.update, conversation items, responses, errors);
- `voice`: audio in and out (server VAD, transcription placeholders, speech synthesis);
- `wire`: ids, JSON encoding and the refusal that becomes an `error` event.

Nothing in `apps.realtime` imports this package; only the code that starts the embedded
upstream does (`apps.sessions.upstream`, the tests' servers, the benchmarks' common module).
"""
