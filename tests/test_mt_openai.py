"""The ``openai:MODEL`` engine against a local mock chat-completions server (no network).

The mock is a ``ThreadingHTTPServer`` on 127.0.0.1 whose answers a test scripts through
``server.respond(request) -> (status, headers, body)``; every request it got is in
``server.requests``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from cltx.cli.main import app
from cltx.errors import CltxError
from cltx.mt import openai_engine
from cltx.mt.engines import make_engine
from cltx.mt.openai_engine import OpenAIEngine, OpenAIEngineError, OpenAISetupError, retry_after
from cltx.mt.pipeline import MTConfig, translate_records
from cltx.mt.tcache import cache_namespace, engine_identity

SECRET = "sk-test-SECRET-4711"


def _ok(content: str, finish: str = "stop") -> tuple[int, dict, bytes]:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    return 200, {}, json.dumps(body).encode()


def _user_text(req: dict) -> str:
    return req["body"]["messages"][-1]["content"]


class _Mock:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.respond = lambda req: _ok(_user_text(req).upper())
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                with mock.lock:
                    mock.requests.append(req)
                    mock.in_flight += 1
                    mock.max_in_flight = max(mock.max_in_flight, mock.in_flight)
                try:
                    status, headers, body = mock.respond(req)
                finally:
                    with mock.lock:
                        mock.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MY_LLM_KEY", "http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    # no real waiting between retries; the waits asked for are recorded
    sleeps: list[float] = []
    monkeypatch.setattr(openai_engine, "_sleep", lambda seconds, stop: sleeps.append(seconds))
    return sleeps


@pytest.fixture
def server():
    mock = _Mock()
    thread = threading.Thread(target=mock.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield mock
    mock.httpd.shutdown()
    mock.httpd.server_close()


def _engine(server, model="m1", **options) -> OpenAIEngine:
    return OpenAIEngine(model, "en", "pt", base_url=server.url, **options)


# --------------------------------------------------------------------------------------------- requests
def test_request_shape_with_key(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    eng = _engine(server, api_key_env="MY_LLM_KEY")
    assert eng.name == "openai:m1"
    assert eng.translate(["Hello there."]) == ["HELLO THERE."]
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = req["body"]
    assert body["model"] == "m1" and body["temperature"] == 0 and "max_tokens" not in body
    system, user = body["messages"]
    assert user == {"role": "user", "content": "Hello there."}
    assert system["role"] == "system"
    # languages by name, and the markers the pipeline inserts (Indicator Tokens, protected spans)
    for needle in ("English", "Portuguese", "[1]", "XPH1X", "translation only"):
        assert needle in system["content"], needle
    assert eng.stats["requests"] == 1 and eng.stats["prompt_tokens"] == 10


def test_no_auth_header_without_key_and_optional_fields(server):
    eng = _engine(server, model="llama3:8b", max_tokens=64, temperature=None, system_prompt="To {tgt}, please.")
    eng.translate(["x"])
    (req,) = server.requests
    assert "Authorization" not in req["headers"]
    body = req["body"]
    assert body["model"] == "llama3:8b" and body["max_tokens"] == 64 and "temperature" not in body
    assert body["messages"][0]["content"] == "To Portuguese, please."


def test_base_url_from_env_and_trailing_endpoint(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    assert OpenAIEngine("m", "en", "de").translate(["a"]) == ["A"]
    eng = OpenAIEngine("m", "en", "de", base_url=server.url + "/chat/completions")
    assert eng.url == server.url + "/chat/completions"
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]


def test_order_kept_under_concurrency_and_duplicates_sent_once(server):
    def slow_reverse(req):
        text = _user_text(req)
        time.sleep(0.05 if text.endswith(("0", "2", "4")) else 0.0)  # later texts finish first
        return _ok(text[::-1])

    server.respond = slow_reverse
    texts = [f"text {i}" for i in range(16)] + ["text 3", "text 0"]
    eng = _engine(server, concurrency=8)
    assert eng.translate(texts) == [t[::-1] for t in texts]
    assert len(server.requests) == 16
    assert server.max_in_flight > 1


def test_whitespace_and_think_block(server):
    server.respond = lambda req: _ok("<think>hmm</think>\n\n  " + _user_text(req).strip().upper() + "\n")
    eng = _engine(server)
    assert eng.translate(["abc", "  two\n"]) == ["ABC", "  TWO\n"]


# --------------------------------------------------------------------------------------------- failures
def test_retries_429_and_500_then_succeeds(server, _clean_env):
    answers = iter(
        [
            (429, {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}'),
            (500, {}, b"oops"),
        ]
    )
    server.respond = lambda req: next(answers, None) or _ok("ok")
    eng = _engine(server, max_retries=3)
    assert eng.translate(["a"]) == ["ok"]
    assert len(server.requests) == 3 and eng.stats["retries"] == 2
    first, second = _clean_env
    assert first == 0.0  # Retry-After honoured
    assert OpenAIEngine.BACKOFF_S <= second <= 2 * OpenAIEngine.BACKOFF_S  # 2nd attempt: doubled, jittered


def test_gives_up_after_max_retries(server, _clean_env):
    server.respond = lambda req: (503, {}, b'{"error": {"message": "overloaded"}}')
    eng = _engine(server, max_retries=2)
    with pytest.raises(OpenAIEngineError, match=r"HTTP 503 .* after 3 attempts: overloaded"):
        eng.translate(["a"])
    assert len(server.requests) == 3 and len(_clean_env) == 2


def test_retry_after_header_forms():
    assert retry_after({"Retry-After": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after({"Retry-After": "999999"}) == OpenAIEngine.RETRY_AFTER_MAX_S
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("key_set", [False, True])
def test_auth_error_at_once_names_the_env_var(server, monkeypatch, status, key_set):
    if key_set:
        monkeypatch.setenv("MY_LLM_KEY", SECRET)
    server.respond = lambda req: (status, {}, b'{"error": {"message": "Incorrect API key provided"}}')
    eng = _engine(server, api_key_env="MY_LLM_KEY", max_retries=5, concurrency=1)
    with pytest.raises(OpenAISetupError) as info:
        eng.translate(["a", "b", "c"])
    msg = str(info.value)
    assert f"HTTP {status}" in msg and "Incorrect API key provided" in msg and "MY_LLM_KEY" in msg
    assert ("is set but" in msg) == key_set and SECRET not in msg
    assert len(server.requests) == 1  # no retries, and the queued texts were not sent
    with pytest.raises(OpenAISetupError, match="MY_LLM_KEY"):  # later calls fail without a request
        eng.translate(["d"])
    assert len(server.requests) == 1


def test_other_4xx_fails_at_once_with_the_server_message(server):
    server.respond = lambda req: (400, {}, b'{"error": {"message": "maximum context length is 8 tokens"}}')
    eng = _engine(server, max_retries=5)
    with pytest.raises(OpenAIEngineError, match="HTTP 400 .*maximum context length is 8 tokens"):
        eng.translate(["a"])
    assert len(server.requests) == 1
    server.respond = lambda req: (404, {}, b'{"error": {"message": "model m1 does not exist"}}')
    with pytest.raises(OpenAIEngineError, match="does not exist.*check the model name"):
        eng.translate(["a"])


def test_connection_refused_is_a_clear_error_after_retries(_clean_env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = OpenAIEngine("m", "en", "pt", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(OpenAISetupError) as info:
        eng.translate(["a"])
    msg = str(info.value)
    assert f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in msg
    assert "after 3 attempts" in msg and "base_url" in msg
    assert len(_clean_env) == 2 and eng.stats["requests"] == 3
    with pytest.raises(OpenAISetupError, match="cannot reach"):  # never reached: later calls fail at once
        eng.translate(["b"])
    assert eng.stats["requests"] == 3


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ((200, {}, b'{"choices": []}'), "no choices\\[0\\].message.content"),
        ((200, {}, b'{"error": {"message": "backend died"}}'), "no choices.*backend died"),
        (_ok("   "), "empty translation"),
        (_ok("half a transl", finish="length"), "cut off.*max_tokens"),
        ((200, {}, b"<html>proxy</html>"), "not JSON"),
    ],
)
def test_unusable_answers_are_errors(server, answer, needle):
    server.respond = lambda req: answer
    with pytest.raises(OpenAIEngineError, match=needle):
        _engine(server).translate(["a"])


def test_a_bad_answer_fails_only_its_record(server):
    """The pipeline retries a failed call text by text: only the record with the bad text fails,
    and the texts that were translated in the failed call are not requested again."""

    def respond(req):
        text = _user_text(req)
        return (200, {}, b'{"choices": []}') if "poison" in text else _ok(text.upper())

    server.respond = respond
    eng = make_engine("openai:m1", "en", "pt", options={"base_url": server.url})
    records = [{"q": "one", "a": "two"}, {"q": "poison pill", "a": "x"}, {"q": "three", "a": "four"}]
    out = translate_records(records, eng, MTConfig(fields=["q", "a"], src="en", tgt="pt", quality=False))
    assert [r["_mt"]["status"] for r in out] == ["joint", "failed", "joint"]
    assert out[0]["q"] == "ONE" and out[2]["a"] == "FOUR" and out[1]["q"] == "poison pill"
    assert "OpenAIEngineError" in out[1]["_mt"]["error"]
    sent = Counter(_user_text(r) for r in server.requests)
    # the bad text: joint call, its one-by-one retry, then the same two for the field-by-field fallback
    assert sum(n for t, n in sent.items() if "poison" in t) == 4
    # every other text once: what the failed calls did translate was reused by their retries
    assert all(n == 1 for t, n in sent.items() if "poison" not in t) and "x" in sent


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"base_url": "ftp://host/v1"}, "--engine-option base_url='ftp://host/v1': give the http(s) URL"),
        ({"base_url": "localhost:8000/v1"}, "--engine-option base_url='localhost:8000/v1'"),
        ({"concurrency": 0}, "--engine-option concurrency=0: give a whole number >= 1"),
        ({"timeout": 0}, "--engine-option timeout=0: give a number > 0"),
        ({"timeout": "soon"}, "--engine-option timeout='soon'"),
        ({"max_retries": -1}, "--engine-option max_retries=-1: give a whole number >= 0"),
        ({"temperature": 3}, "--engine-option temperature=3: give a number >= 0 and <= 2"),
        ({"max_tokens": 0}, "--engine-option max_tokens=0"),
        ({"system_prompt": 5}, "--engine-option system_prompt=5: give the instruction text"),
        ({"max_input_len": 0}, "--engine-option max_input_len=0"),
        ({"concurency": 4}, "--engine-option='concurency': not an option of openai:m; did you mean concurrency?"),
    ],
)
def test_option_errors(options, needle):
    with pytest.raises(CltxError) as info:
        make_engine("openai:m", "en", "pt", options=options)
    assert needle in str(info.value)


@pytest.mark.parametrize("options", [{"api_key": SECRET}, {"api_key_env": SECRET}])
def test_a_key_given_as_an_option_is_refused_and_never_shown(options):
    with pytest.raises(CltxError) as info:
        make_engine("openai:m", "en", "pt", options=options)
    assert "api_key_env" in str(info.value) and SECRET not in str(info.value)


def test_spec_and_env_errors(monkeypatch):
    with pytest.raises(CltxError, match=r"--engine='openai:': name the model"):
        make_engine("openai:", "en", "pt")
    monkeypatch.setenv("OPENAI_BASE_URL", "not a url")
    with pytest.raises(CltxError, match="OPENAI_BASE_URL='not a url'"):
        make_engine("openai:m", "en", "pt")
    with pytest.raises(CltxError, match="openai:MODEL"):
        make_engine("opneai:m", "en", "pt")


# --------------------------------------------------------------------------------------------- cache key
def _ns(spec, options=None):
    eid, opts = engine_identity(spec, options or {}, keep_newlines=True)
    return cache_namespace(engine=eid, options=opts, src="en", tgt="pt"), json.dumps([eid, opts])


def test_cache_key_follows_the_output_settings_never_the_key(monkeypatch):
    base = _ns("openai:m1", {"base_url": "http://a:1/v1"})[0]
    differs = [
        _ns("openai:m2", {"base_url": "http://a:1/v1"}),
        _ns("openai:m1", {"base_url": "http://b:1/v1"}),
        _ns("openai:m1", {"base_url": "http://a:1/v1", "temperature": 0.7}),
        _ns("openai:m1", {"base_url": "http://a:1/v1", "system_prompt": "Translate."}),
        _ns("openai:m1", {"base_url": "http://a:1/v1", "max_tokens": 100}),
    ]
    assert all(ns != base for ns, _ in differs) and len({ns for ns, _ in differs}) == len(differs)
    # the default base URL comes from the environment, and so does its part of the key
    monkeypatch.setenv("OPENAI_BASE_URL", "http://b:1/v1")
    assert _ns("openai:m1")[0] == differs[1][0]
    monkeypatch.delenv("OPENAI_BASE_URL")
    # the API key, the variable's name and the transport settings do not change the key
    plain, shown = _ns("openai:m1", {"base_url": "http://a:1/v1/"})
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OTHER_KEY", SECRET)
    same = _ns(
        "openai:m1",
        {"base_url": "http://a:1/v1", "api_key_env": "OTHER_KEY", "concurrency": 3, "timeout": 9, "max_retries": 0},
    )
    assert plain == base and same[0] == base
    assert SECRET not in shown and SECRET not in same[1]


# --------------------------------------------------------------------------------------------- CLI
WORDS = {"Who": "Quem", "wrote": "escreveu", "the": "o", "book": "livro", "Ana": "Ana", "did": "escreveu",
         "Read": "Leia", "it": "isso", "at": "em", "Say": "Diga", "hello": "olá", "Hello": "Olá"}  # fmt: skip


def _word_map(req):
    """A deterministic 'translation': known words replaced, everything else (markers too) kept."""
    return _ok(re.sub(r"[A-Za-z]+", lambda m: WORDS.get(m.group(0), m.group(0)), _user_text(req)))


def test_cli_end_to_end_splits_fields_and_caches(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.respond = _word_map
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"id": 1, "question": "Who wrote the book?", "passage": "Ana did. Read it at https://example.com/a?b=1", '
        '"answer": "Ana"}\n'
        '{"id": 2, "instruction": "Say hello.", "input": "", "output": "Hello!"}\n'
    )
    fields = "instruction,input,output,question,passage,answer"
    cache = tmp_path / "cache"
    args = ["mt", str(inp), str(tmp_path / "out.jsonl"), "--fields", fields, "--engine", "openai:mock-mt"]
    args += ["--engine-option", f"base_url={server.url}", "--engine-option", "concurrency=4", "--cache", str(cache)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["_mt"]["status"] for row in rows] == ["joint", "joint"]
    assert rows[0]["question"] == "Quem escreveu o livro?"
    assert rows[0]["passage"] == "Ana escreveu. Leia isso em https://example.com/a?b=1"  # URL protected and back
    assert rows[0]["answer"] == "Ana" and rows[0]["_source"]["question"] == "Who wrote the book?"
    assert rows[1]["instruction"] == "Diga olá." and rows[1]["output"] == "Olá!" and rows[1]["input"] == ""
    sent = [_user_text(q) for q in server.requests]
    # joint sequences (fields between Indicator Tokens), the URL masked, the key sent as a bearer token
    assert any("[1]" in t and "[2]" in t and "[3]" in t for t in sent)
    assert all("example.com" not in t for t in sent) and any("XPH1X" in t for t in sent)
    assert all(q["headers"]["Authorization"] == f"Bearer {SECRET}" for q in server.requests)
    # the same run again is served from the cache (with concurrency changed: not part of the key)
    n = len(server.requests)
    args[-3] = "concurrency=2"
    r = CliRunner().invoke(app, [*args[:2], str(tmp_path / "out2.jsonl"), *args[3:]])
    assert r.exit_code == 0, r.output
    assert len(server.requests) == n
    assert (tmp_path / "out2.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
    assert all(SECRET.encode() not in p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert SECRET not in (tmp_path / "out.report.json").read_text()


def test_cli_refused_key_stops_the_run_naming_the_env_var(server, tmp_path):
    server.respond = lambda req: (401, {}, b'{"error": {"message": "Incorrect API key provided"}}')
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(12)))
    args = ["mt", str(inp), str(tmp_path / "o.jsonl"), "--fields", "q,a", "--engine", "openai:m", "-q", "--no-cache"]
    args += ["--engine-option", f"base_url={server.url}", "--engine-option", "concurrency=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    last = [ln for ln in r.output.splitlines() if ln.strip()][-1]
    assert last.startswith("error: engine openai:m failed on") and "--max-errors=10" in last
    assert "HTTP 401" in last and "$OPENAI_API_KEY is not set" in last
    assert len(server.requests) <= 2  # the requests in flight when the first 401 came back, no more


def test_cli_sends_whole_texts_to_chat_models_unless_told(server, tmp_path):
    """openai: keeps line breaks itself, so a multi-line field is one request (more context, fewer calls);
    --keep-newlines still splits it line by line, as for sentence-level engines (the default there)."""
    server.respond = _word_map
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "Say hello.\nRead the book.", "output": "Hello!"}) + "\n")
    base = ["mt", str(inp), "--fields", "instruction,output", "--engine", "openai:m", "--no-cache"]
    base += ["--engine-option", f"base_url={server.url}"]
    r = CliRunner().invoke(app, [base[0], base[1], str(tmp_path / "a.jsonl"), *base[2:]])
    assert r.exit_code == 0, r.output
    assert any("Say hello.\nRead the book." in _user_text(q) for q in server.requests)
    assert json.loads((tmp_path / "a.jsonl").read_text())["instruction"] == "Diga olá.\nLeia o livro."
    server.requests.clear()
    r = CliRunner().invoke(app, [base[0], base[1], str(tmp_path / "b.jsonl"), *base[2:], "--keep-newlines"])
    assert r.exit_code == 0, r.output
    assert not any("\n" in _user_text(q) for q in server.requests)
    assert json.loads((tmp_path / "b.jsonl").read_text())["instruction"] == "Diga olá.\nLeia o livro."


def test_line_by_line_is_the_default_for_other_engines():
    from cltx.mt.engines import KeepNewlines, default_keep_newlines, make_engine

    assert default_keep_newlines("bergamot") and default_keep_newlines("hf:x") and not default_keep_newlines("openai:m")
    assert isinstance(make_engine("python:json:loads", "en", "pt"), KeepNewlines)
    assert not isinstance(make_engine("openai:m", "en", "pt"), KeepNewlines)
