"""Calls that do not pass through the relay (CONTRACT section 7): WebRTC calls placed through
`POST /v1/realtime/calls`, the short-lived keys that authorise them, phone calls announced by
the upstream's signed webhook, the call profiles that answer those, and the "Call the agent"
page. Each call, once answered, is attached to a sideband session
(`apps.sessions.sideband.attach_call`) and is then listed and steered like a relayed one."""
