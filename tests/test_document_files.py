"""Saved Bluesky documents read back in every layout bluesky and suitcase write, bad lines reported by number."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky.callbacks.json_writer import JSONLinesWriter, JSONWriter

from mnedge_live.document_files import BadEntry, DocumentFileWriter, document_pair, read_documents

START = {"uid": "u1", "time": 1.0}
DESC = {"uid": "d1", "run_start": "u1", "time": 1.0, "data_keys": {}, "name": "primary"}
EVENT = {"uid": "e1", "descriptor": "d1", "seq_num": 1, "time": 1.0, "data": {"x": [1.0, float("nan")]},
         "timestamps": {"x": 1.0}}
STOP = {"uid": "s1", "run_start": "u1", "time": 2.0, "exit_status": "success"}
DOCS = [("start", START), ("descriptor", DESC), ("event", EVENT), ("stop", STOP)]


def written_by(writer_cls, tmp_path, name):
    writer = writer_cls(str(tmp_path), name)
    for n, d in DOCS:
        writer(n, d)
    return tmp_path / name


def same(read, expected=DOCS):
    assert [n for n, _ in read] == [n for n, _ in expected]
    for (_, a), (_, b) in zip(read, expected):
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("writer_cls", [JSONLinesWriter, JSONWriter])
def test_files_written_by_bluesky_s_own_writers_read_back_whole(writer_cls, tmp_path):
    same(list(read_documents(written_by(writer_cls, tmp_path, "run.json"))))


def test_a_json_writer_file_of_a_run_that_never_stopped_reads_up_to_its_last_document(tmp_path):
    """JSONWriter closes its array only at the stop document: a crashed run's file is not one JSON value."""
    writer = JSONWriter(str(tmp_path), "run.json")
    for n, d in DOCS[:3]:
        writer(n, d)
    same(list(read_documents(tmp_path / "run.json")), DOCS[:3])


@pytest.mark.parametrize("layout", ["suitcase", "one_line_array", "pretty_array"])
def test_suitcase_lines_and_json_arrays_in_one_piece_read(layout, tmp_path):
    path = tmp_path / "docs.json"
    if layout == "suitcase":
        path.write_text("".join(json.dumps([n, d]) + "\n" for n, d in DOCS))
    elif layout == "one_line_array":
        path.write_text(json.dumps([{"name": n, "doc": d} for n, d in DOCS]))
    else:
        path.write_text(json.dumps([[n, d] for n, d in DOCS], indent=2))
    same(list(read_documents(path)))


def test_lines_that_are_no_documents_come_back_with_their_line_numbers_between_the_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"name": "start", "doc": START}), "garbage {", json.dumps({"name": "bogus", "doc": {}}),
             json.dumps({"name": "event", "doc": [1, 2]}), json.dumps({"nom": "x"}),
             json.dumps({"name": "stop", "doc": STOP})[:-9], json.dumps({"name": "stop", "doc": STOP})]
    path.write_text("\n".join(lines) + "\n")
    read = list(read_documents(path))
    assert read[0] == ("start", START) and read[-1] == ("stop", STOP)
    bad = read[1:-1]
    assert all(isinstance(b, BadEntry) for b in bad)
    assert [b.line for b in bad] == [2, 3, 4, 5, 6]
    assert "not JSON" in bad[0].reason and "'bogus' is not a Bluesky document name" in bad[1].reason
    assert "not an object" in bad[2].reason and "not a document" in bad[3].reason and "cut short" in bad[4].reason


@pytest.mark.parametrize("content", [b"", b"\n \n", b"\x93NUMPY\x01\x00garbage", b"name,doc\nstart,{}\n"])
def test_empty_binary_or_text_files_are_reported_not_raised(content, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    read = list(read_documents(path))
    assert read and all(isinstance(b, BadEntry) for b in read)


def test_a_missing_file_raises_oserror_for_the_caller_to_report(tmp_path):
    with pytest.raises(OSError):
        list(read_documents(tmp_path / "none.jsonl"))


def test_document_pair_takes_both_layouts():
    assert document_pair({"name": "stop", "doc": STOP}) == ("stop", STOP)
    assert document_pair(["stop", STOP]) == ("stop", STOP)
    with pytest.raises(ValueError):
        document_pair(["stop", STOP, 1])


def test_the_writer_writes_numpy_values_as_bluesky_s_layout_and_only_whole_files(tmp_path):
    path = tmp_path / "sub" / "derived.jsonl"
    writer = DocumentFileWriter(path)
    writer("event", {**EVENT, "data": {"x": np.array([1.5, np.nan]), "n": np.int64(3)}})
    assert not path.exists() and (tmp_path / "sub" / "derived.jsonl.partial").exists()
    assert writer.close() == path and not (tmp_path / "sub" / "derived.jsonl.partial").exists()
    [(name, doc)] = list(read_documents(path))
    assert name == "event" and doc["data"]["n"] == 3
    assert doc["data"]["x"][0] == 1.5 and np.isnan(doc["data"]["x"][1])
    assert json.loads(path.read_text())["name"] == "event"   # {"name", "doc"} per line, as JSONLinesWriter


def test_deep_nesting_long_lines_and_nested_arrays_are_bad_entries_not_crashes(tmp_path, monkeypatch):
    """A line nested 1,500 deep raised RecursionError from the JSON parser; a line of gigabytes would be
    read whole; arrays of arrays were walked recursively."""
    import mnedge_live.document_files as D

    monkeypatch.setattr(D, "MAX_LINE_CHARS", 4096)
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"name": "start", "doc": START}), "[" * 1500 + "]" * 1500,
             json.dumps({"name": "event", "doc": {**EVENT, "data": {"x": [0.5] * 2000}}}),
             json.dumps([[["start", START]]]), json.dumps({"name": "stop", "doc": STOP})]
    path.write_text("\n".join(lines) + "\n")
    read = list(read_documents(path))
    assert read[0] == ("start", START) and read[-1] == ("stop", STOP)
    assert isinstance(read[1], BadEntry) and read[1].line == 2 and "nested too deeply" in read[1].reason
    assert isinstance(read[2], BadEntry) and read[2].line == 3 and "4096 characters" in read[2].reason
    assert isinstance(read[3], BadEntry) and read[3].line == 4   # an array of arrays is no document
    first_too_long = tmp_path / "long.jsonl"
    first_too_long.write_text("x" * 10_000 + "\n" + json.dumps({"name": "stop", "doc": STOP}) + "\n")
    bad, stop = list(read_documents(first_too_long))   # the lines after a first line too long are still read
    assert bad.line == 1 and "4096 characters" in bad.reason and stop == ("stop", STOP)


@pytest.mark.parametrize("first_line", ['{"name": "start", "doc": {"uid": "cut-sh', "# saved by beamline X", "42"])
def test_a_damaged_first_line_costs_that_line_only(first_line, tmp_path):
    """A first line that was no document made the whole file one bad entry (the file was then parsed as one
    JSON value, which failed): 4 documents lost, reported as 1 bad line."""
    path = tmp_path / "docs.jsonl"
    path.write_text(first_line + "\n" + "".join(json.dumps({"name": n, "doc": d}) + "\n" for n, d in DOCS))
    read = list(read_documents(path))
    assert isinstance(read[0], BadEntry) and read[0].line == 1
    same(read[1:])


def test_json_writer_files_are_read_a_line_at_a_time(tmp_path, monkeypatch):
    """bluesky's JSONWriter layout was parsed as one JSON value (ten times the memory of its lines)."""
    import mnedge_live.document_files as D

    monkeypatch.setattr(D, "_whole_file", lambda path: pytest.fail("parsed whole"))
    same(list(read_documents(written_by(JSONWriter, tmp_path, "run.json"))))


def test_an_array_whose_long_documents_wrap_over_lines_is_parsed_whole(tmp_path):
    """Short documents on one line, long ones wrapped (as formatters write arrays): the one-line start made the
    file 'one document per line' and the wrapped descriptor became bad lines, its events refused."""
    path = tmp_path / "docs.json"
    wrapped = json.dumps({"name": "descriptor", "doc": DESC}, indent=2)
    path.write_text("[\n" + json.dumps({"name": "start", "doc": START}) + ",\n" + wrapped + ",\n"
                    + json.dumps({"name": "event", "doc": EVENT}) + ",\n" + json.dumps({"name": "stop", "doc": STOP})
                    + "\n]\n")
    same(list(read_documents(path)))
