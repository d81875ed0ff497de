"""The operators' transcript: entries from items and responses, deltas coalesced per drain."""

from apps.realtime.transcript import UNTRANSCRIBED, Transcript


def _user(item_id: str, text: str) -> dict:
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _response(response_id: str, item_id: str, text: str) -> dict:
    return {
        "id": response_id,
        "output": [{"id": item_id, "type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": text}]}],
    }


def test_items_and_responses_make_entries_in_order():
    transcript = Transcript()
    transcript.item_done(_user("item_1", "Where is my order?"))
    transcript.response_done(_response("resp_1", "item_2", "On its way."), oob=False)
    transcript.transcription("item_3", "thanks")
    assert [(e["id"], e["role"], e["text"]) for e in transcript.snapshot()] == [
        ("item_1", "user", "Where is my order?"),
        ("item_2", "agent", "On its way."),
        ("item_3", "user", "thanks"),
    ]
    assert transcript.snapshot()[1]["response_id"] == "resp_1"
    assert transcript.drain() == [], "nothing is recorded while nobody watches"


def test_deltas_between_drains_become_one_append_per_entry():
    transcript = Transcript()
    transcript.recording = True
    for piece in ("On ", "its ", "way."):
        transcript.delta(item_id="item_2", response_id="resp_1", text=piece, oob=False)
    [change] = transcript.drain()
    assert change["append"] == "On its way." and change["role"] == "agent"
    transcript.delta(item_id="item_2", response_id="resp_1", text="!", oob=False)
    assert transcript.drain()[0]["append"] == "!"
    transcript.response_done(_response("resp_1", "item_2", "On its way!"), oob=False)
    [final] = transcript.drain()
    assert final["text"] == "On its way!" and final["done"] is True
    assert not transcript.has_changes


def test_a_whole_entry_after_an_append_in_one_interval_wins():
    transcript = Transcript()
    transcript.recording = True
    transcript.delta(item_id="item_2", response_id="resp_1", text="On", oob=True)
    transcript.response_done(_response("resp_1", "item_2", "On time."), oob=True)
    [change] = transcript.drain()
    assert change["text"] == "On time." and change["oob"] is True and "append" not in change


def test_only_the_latest_entries_are_kept():
    transcript = Transcript(limit=3)
    for n in range(5):
        transcript.item_done(_user(f"item_{n}", f"line {n}"))
    assert [e["id"] for e in transcript.snapshot()] == ["item_2", "item_3", "item_4"]


def test_agent_items_and_non_messages_are_not_taken_from_item_events():
    transcript = Transcript()
    transcript.item_done({"id": "item_a", "type": "message", "role": "assistant", "content": []})
    transcript.item_done({"id": "item_f", "type": "function_call", "name": "lookup"})
    transcript.item_done({"id": "item_s", "type": "message", "role": "system",
                          "content": [{"type": "input_text", "text": "VIP customer"}]})
    assert [(e["id"], e["role"]) for e in transcript.snapshot()] == [("item_s", "system")]


def _spoken(item_id: str) -> dict:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def test_a_spoken_turn_without_transcript_says_so_until_its_transcription_comes():
    transcript = Transcript()
    transcript.item_done(_spoken("item_1"))
    assert transcript.snapshot()[0]["text"] == UNTRANSCRIBED
    transcript.transcription("item_1", "Where is my parcel?")
    assert transcript.snapshot()[0]["text"] == "Where is my parcel?"
    transcript.item_done(_spoken("item_1"))  # the item again: the words are kept
    assert transcript.snapshot()[0]["text"] == "Where is my parcel?"
    assert [e["text"] for e in transcript.drain_finals()] == [UNTRANSCRIBED, "Where is my parcel?"]


def test_a_nudged_turn_names_its_request_and_an_interrupted_one_says_so():
    transcript = Transcript()
    transcript.response_done(_response("resp_1", "item_1", "A refund, then."), oob=False, request_id="req_7")
    cut = {**_response("resp_2", "item_2", "Let me look that"), "status": "cancelled",
           "status_details": {"type": "cancelled", "reason": "turn_detected"}}
    transcript.response_done(cut, oob=False)
    stopped = {**_response("resp_3", "item_3", "Fine"), "status": "cancelled",
               "status_details": {"type": "cancelled", "reason": "client_cancelled"}}
    transcript.response_done(stopped, oob=False)
    nudged, interrupted, cancelled = transcript.snapshot()
    assert nudged["request_id"] == "req_7" and "interrupted" not in nudged
    assert interrupted["interrupted"] is True and "request_id" not in interrupted
    assert "interrupted" not in cancelled, "only the caller's speech interrupts a turn"


def test_a_turn_whose_deltas_went_unread_while_nobody_watched_starts_again_partial():
    transcript = Transcript()
    transcript.watched(True)
    transcript.delta(item_id="item_2", response_id="resp_1", text="On ", oob=False)
    transcript.watched(False)  # "its " is said meanwhile, and not read
    transcript.watched(True, streaming=("resp_1",))
    transcript.delta(item_id="item_2", response_id="resp_1", text="way.", oob=False)
    [entry] = transcript.snapshot()
    assert (entry["text"], entry["partial"]) == ("way.", True), "no gap in the middle"
    transcript.response_done(_response("resp_1", "item_2", "On its way."), oob=False)
    [entry] = transcript.snapshot()
    assert entry["text"] == "On its way." and "partial" not in entry
