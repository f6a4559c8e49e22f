"""The Redis ledger: one budget shared by every replica.

Check-and-hold and settle are Lua scripts, so each runs atomically in Redis whatever number of
replicas call it at once. Holds live in a sorted set scored by their expiry time (Redis' own clock, so
replicas with skewed clocks agree); every script first releases the expired ones, so the hold of a
worker killed mid-call is returned after its time to live. Records are appended to a Redis stream.

Keys (``prefix`` defaults to ``frugal``): ``{prefix}:spent:{bucket}`` and ``{prefix}:held:{bucket}``
(integer nano-dollars), ``{prefix}:hold:{rid}`` (a hash bucket -> amount), ``{prefix}:expiry`` (sorted
set rid -> expiry in ms) and ``{prefix}:records`` (stream). Scripts touch keys they compute, so use one
Redis server (or one cluster slot via a ``{tag}`` prefix), not a sharded cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared_scorer.budget.ledger import Charge, Denial, SpendRecord
from shared_scorer.errors import ConfigurationError, LedgerError

_RELEASE_EXPIRED = """
local function release(p, rid)
  local hold = redis.call('HGETALL', p .. ':hold:' .. rid)
  for i = 1, #hold, 2 do redis.call('DECRBY', p .. ':held:' .. hold[i], hold[i + 1]) end
  redis.call('DEL', p .. ':hold:' .. rid)
  redis.call('ZREM', p .. ':expiry', rid)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function release_expired(p)
  local expired = redis.call('ZRANGEBYSCORE', p .. ':expiry', '-inf', now_ms())
  for _, rid in ipairs(expired) do release(p, rid) end
end
"""

# ARGV: prefix, rid, amount, ttl_ms, then key, limit pairs. Returns {-1} or {index, spent, held}.
_RESERVE = (
    _RELEASE_EXPIRED
    + """
local p, rid, amount, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
release_expired(p)
local n = (#ARGV - 4) / 2
for i = 0, n - 1 do
  local key, limit = ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i])
  local spent = redis.call('GET', p .. ':spent:' .. key) or '0'
  local held = redis.call('GET', p .. ':held:' .. key) or '0'
  if tonumber(spent) + tonumber(held) + amount > limit then return {i, spent, held} end
end
for i = 0, n - 1 do
  local key = ARGV[5 + 2 * i]
  redis.call('INCRBY', p .. ':held:' .. key, ARGV[3])
  redis.call('HSET', p .. ':hold:' .. rid, key, ARGV[3])
end
if n > 0 then redis.call('ZADD', p .. ':expiry', now_ms() + ttl, rid) end
return {-1}
"""
)

# ARGV: prefix, rid, actual, then keys.
_SETTLE = (
    _RELEASE_EXPIRED
    + """
local p, rid = ARGV[1], ARGV[2]
release(p, rid)
for i = 4, #ARGV do redis.call('INCRBY', p .. ':spent:' .. ARGV[i], ARGV[3]) end
return 0
"""
)

# ARGV: prefix, key. Returns {spent, held}.
_FIGURES = (
    _RELEASE_EXPIRED
    + """
local p, key = ARGV[1], ARGV[2]
release_expired(p)
return {redis.call('GET', p .. ':spent:' .. key) or '0', redis.call('GET', p .. ':held:' .. key) or '0'}
"""
)


def redact_url(url: str) -> str:
    """``url`` with its password (``redis://user:PASSWORD@host``, or a ``?password=`` parameter) shown as ``***``.

    >>> redact_url("redis://:s3cret@10.0.0.5:6379/0")
    'redis://:***@10.0.0.5:6379/0'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, host = netloc.rsplit("@", 1)
            if ":" in credentials:  # "user:password@host"; a user name alone ("user@host") is no secret
                netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() == "password" for key, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable Redis URL>"


class RedisLedger:
    """A ledger in Redis, shared by every process and machine that opens the same URL and prefix.

    Needs the ``redis`` package (``pip install frugal-cascade[redis]``).

    Example (with a Redis server on 127.0.0.1:6379)::

        ledger = RedisLedger("redis://127.0.0.1:6379/0")
        budget = Budget(ledger, [Limit("tenant", "50", period="day")])
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "frugal", client: Any = None) -> None:
        self._url = url
        self.url = redact_url(url)
        """Where the ledger is, its password (if any) shown as ``***``: safe for messages and logs."""
        self.prefix = prefix
        if client is None:
            try:
                import redis
            except ImportError:
                raise ConfigurationError(
                    "the Redis ledger needs the 'redis' package: pip install 'frugal-cascade[redis]'"
                ) from None
            try:
                client = redis.Redis.from_url(url, decode_responses=True)
            except ValueError as exc:  # redis-py's message quotes the URL: do not pass it on
                raise ConfigurationError(f"bad Redis ledger URL {self.url}: {_redacted(str(exc), url)}") from None
        self._client = client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._figures = client.register_script(_FIGURES)

    def reserve(self, rid: str, charges: Sequence[Charge], amount_nano: int, ttl_s: float) -> Denial | None:
        args: list[Any] = [self.prefix, rid, amount_nano, max(1, int(ttl_s * 1000))]
        for charge in charges:
            args += [charge.key, charge.limit_nano]
        reply = self._call(self._reserve, args)
        if int(reply[0]) < 0:
            return None
        return Denial(int(reply[0]), int(reply[1]), int(reply[2]))

    def settle(self, rid: str, keys: Sequence[str], actual_nano: int) -> None:
        self._call(self._settle, [self.prefix, rid, actual_nano, *keys])

    def figures(self, key: str) -> tuple[int, int]:
        spent, held = self._call(self._figures, [self.prefix, key])
        return int(spent), int(held)

    def record(self, rows: Iterable[SpendRecord]) -> None:
        rows = list(rows)
        if not rows:
            return
        pipe = self._client.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(f"{self.prefix}:records", row.as_strings())  # type: ignore[arg-type]
        self._run(pipe.execute)

    def records(self, since: float | None = None) -> list[SpendRecord]:
        out: list[SpendRecord] = []
        start = "-"
        stream = f"{self.prefix}:records"
        while True:
            batch = self._run(lambda start=start: self._client.xrange(stream, min=start, count=1000))
            for entry_id, fields in batch:
                row = SpendRecord.from_strings(fields, f"{self.url} stream {stream} entry {entry_id}")
                if since is None or row.ts >= since:
                    out.append(row)
            if len(batch) < 1000:
                return out
            start = "(" + batch[-1][0]

    def close(self) -> None:
        self._client.close()

    def _call(self, script: Any, args: list[Any]) -> Any:
        return self._run(lambda: script(keys=[], args=args))

    def _run(self, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.exceptions.RedisError as exc:
            message = _redacted(f"{type(exc).__name__}: {exc}", self._url)
            raise LedgerError(f"Redis ledger at {self.url} (prefix {self.prefix!r}): {message}") from exc

    def __repr__(self) -> str:
        return f"RedisLedger({self.url!r}, prefix={self.prefix!r})"

    __str__ = __repr__


def _redacted(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if it has one) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password] + [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return "(details withheld: the URL does not parse)"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text.replace(url, redact_url(url))
