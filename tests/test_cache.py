"""ConfCache: conf tokens as APISIX sees them (docs/protocol.md §6), with a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from helpers import run_in_threads

from runner.cache import ConfCache
from runner.errors import ErrCode, TokenNotFound

TTL = 4320.0  # 1.2 x APISIX_CONF_EXPIRE_TIME (3600)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs: object) -> ConfCache[str]:
    return ConfCache(TTL, clock=clock, **kwargs)  # type: ignore[arg-type]


# --- tokens ------------------------------------------------------------------------


def scripted(*values: int) -> Callable[[], int]:
    """A token source that draws ``values`` in order (the real one is ``secrets.randbits(32)``)."""
    it = iter(values)
    return lambda: next(it)


def test_a_drawn_zero_or_live_token_is_drawn_again(clock: FakeClock) -> None:
    cache = make(clock, tokens=scripted(0, 7, 7, 0, 9))
    assert [cache.add("a"), cache.add("b")] == [7, 9]
    assert [cache.get(7), cache.get(9)] == ["a", "b"]


def test_tokens_are_non_zero_uint32_and_unique_among_live_ones(clock: FakeClock) -> None:
    cache = make(clock)
    tokens = [cache.add(str(i)) for i in range(1000)]
    assert len(set(tokens)) == len(tokens)
    assert all(0 < t <= 0xFFFFFFFF for t in tokens)
    assert [cache.get(t) for t in tokens] == [str(i) for i in range(1000)]


def test_tokens_are_not_sequential_so_a_local_peer_cannot_guess_apisix_tokens(clock: FakeClock) -> None:
    cache = make(clock)
    tokens = [cache.add(str(i)) for i in range(200)]
    steps = {abs(b - a) for a, b in zip(tokens, tokens[1:], strict=False)}
    assert not steps & set(range(1, 1000)), "consecutive tokens are close to each other"
    # Spread over the whole 32-bit range, not a window of it.
    assert min(tokens) < 1 << 30 and max(tokens) > 3 << 30


def test_token_from_another_cache_is_not_found(clock: FakeClock) -> None:
    old = make(clock, tokens=scripted(100))
    new = make(clock, tokens=scripted(5000))
    stale = old.add("route A")
    new.add("route B")
    with pytest.raises(TokenNotFound):
        new.get(stale)


def test_unknown_token_raises_token_not_found_mapped_to_conf_token_not_found(clock: FakeClock) -> None:
    cache = make(clock, tokens=scripted(10))
    cache.add("a")
    with pytest.raises(TokenNotFound) as info:
        cache.get(11)
    assert info.value.code == ErrCode.CONF_TOKEN_NOT_FOUND


def test_token_zero_is_never_found(clock: FakeClock) -> None:
    cache = make(clock, tokens=scripted(0, 5, 6))
    cache.add("a")
    cache.add("b")
    with pytest.raises(TokenNotFound):
        cache.get(0)


def test_invalid_ttl_or_size_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        ConfCache(0, clock=clock)
    with pytest.raises(ValueError):
        ConfCache(-1, clock=clock)
    with pytest.raises(ValueError):
        ConfCache(TTL, max_entries=0, clock=clock)


# --- sliding TTL -------------------------------------------------------------------------


def test_token_is_found_until_its_ttl_passes_without_use(clock: FakeClock) -> None:
    cache = make(clock)
    token = cache.add("conf")
    clock.advance(TTL - 1)
    assert cache.get(token) == "conf"


def test_expired_token_replies_conf_token_not_found(clock: FakeClock) -> None:
    cache = make(clock)
    token = cache.add("conf")
    clock.advance(TTL + 1)
    with pytest.raises(TokenNotFound) as info:
        cache.get(token)
    assert info.value.code == ErrCode.CONF_TOKEN_NOT_FOUND
    # ... and stays gone.
    with pytest.raises(TokenNotFound):
        cache.get(token)


def test_each_get_extends_the_token_life_by_a_full_ttl(clock: FakeClock) -> None:
    cache = make(clock)
    token = cache.add("conf")
    for _ in range(5):  # in use for 5 x 0.9 TTL: far longer than one TTL from creation
        clock.advance(TTL * 0.9)
        assert cache.get(token) == "conf"
    clock.advance(TTL + 1)
    with pytest.raises(TokenNotFound):
        cache.get(token)


def test_find_extends_the_token_life_like_get(clock: FakeClock) -> None:
    cache = make(clock)
    conf = [("say", '{"body":"hi"}')]
    token = cache.add("prepared", "route#1#ext-plugin-pre-req#1", conf)
    clock.advance(TTL * 0.9)
    assert cache.find("route#1#ext-plugin-pre-req#1", conf) == token
    clock.advance(TTL * 0.9)  # 1.8 TTL after creation, 0.9 after the find
    assert cache.get(token) == "prepared"


def test_expired_entries_do_not_count_as_live(clock: FakeClock) -> None:
    cache = make(clock)
    cache.add("a")
    cache.add("b")
    assert len(cache) == 2
    clock.advance(TTL + 1)
    assert len(cache) == 0


def test_forget_keys_stops_reuse_by_key_but_keeps_issued_tokens(clock: FakeClock) -> None:
    # After a plugin reload the next PrepareConf must get a new token (new code),
    # while APISIX keeps using the tokens it already holds.
    cache = make(clock)
    token = cache.add("a", "key", "conf")
    cache.forget_keys()
    assert cache.find("key", "conf") is None
    assert cache.get(token) == "a"
    fresh = cache.add("b", "key", "conf")
    assert fresh != token
    assert cache.find("key", "conf") == fresh


# --- LRU bound ---------------------------------------------------------------------------


def test_full_cache_evicts_the_least_recently_used_token(clock: FakeClock) -> None:
    cache = make(clock, max_entries=3)
    a = cache.add("a")
    clock.advance(1)
    b = cache.add("b")
    clock.advance(1)
    c = cache.add("c")
    clock.advance(1)
    assert cache.get(a) == "a"  # a is now the most recently used; b the least
    clock.advance(1)
    d = cache.add("d")
    with pytest.raises(TokenNotFound):
        cache.get(b)
    assert [cache.get(t) for t in (a, c, d)] == ["a", "c", "d"]
    assert len(cache) == 3


def test_find_counts_as_a_use_for_eviction(clock: FakeClock) -> None:
    cache = make(clock, max_entries=2)
    a = cache.add("a", "key-a", "conf-a")
    b = cache.add("b", "key-b", "conf-b")
    assert cache.find("key-a", "conf-a") == a
    cache.add("c")
    with pytest.raises(TokenNotFound):
        cache.get(b)
    assert cache.get(a) == "a"


def test_cache_of_one_keeps_only_the_newest(clock: FakeClock) -> None:
    cache = make(clock, max_entries=1)
    a = cache.add("a")
    b = cache.add("b")
    assert a != b
    with pytest.raises(TokenNotFound):
        cache.get(a)
    assert cache.get(b) == "b"


def test_bytes_bound_evicts_the_least_recently_used_until_the_new_entry_fits(clock: FakeClock) -> None:
    cache = make(clock, max_bytes=1000)
    a = cache.add("a", size=400)
    b = cache.add("b", size=400)
    assert cache.get(a) == "a"  # b is now the least recently used
    c = cache.add("c", size=300)
    with pytest.raises(TokenNotFound):
        cache.get(b)
    assert [cache.get(a), cache.get(c)] == ["a", "c"]
    assert cache.bytes == 700
    assert cache.evicted == 1


def test_entry_larger_than_the_bytes_bound_empties_the_cache_but_is_kept(clock: FakeClock) -> None:
    # A conf bigger than the bound still gets a token (APISIX must not retry
    # PrepareConf under its global lock): it lives alone until the next one.
    cache = make(clock, max_bytes=100)
    a = cache.add("a", size=50)
    big = cache.add("big", size=500)
    with pytest.raises(TokenNotFound):
        cache.get(a)
    assert cache.get(big) == "big"
    small = cache.add("small", size=10)
    with pytest.raises(TokenNotFound):
        cache.get(big)
    assert cache.get(small) == "small"


def test_expired_entries_give_their_bytes_back(clock: FakeClock) -> None:
    cache = make(clock, max_bytes=1000)
    cache.add("a", size=600)
    clock.advance(TTL + 1)
    b = cache.add("b", size=600)
    assert cache.get(b) == "b"
    assert cache.bytes == 600
    assert cache.evicted == 0


# --- find(key, conf): PrepareConf dedup --------------------------------------------------


def test_find_returns_the_live_token_for_the_same_key_and_conf(clock: FakeClock) -> None:
    cache = make(clock)
    conf = [("say", '{"body":"hi"}')]
    token = cache.add("prepared", "route#1#ext-plugin-pre-req#42", conf)
    assert cache.find("route#1#ext-plugin-pre-req#42", [("say", '{"body":"hi"}')]) == token


ROUTE = "route#1#ext-plugin-pre-req#42"
HI, BYE = [("say", '{"body":"hi"}')], [("say", '{"body":"bye"}')]


@pytest.mark.parametrize(
    ("added", "asked"),
    [
        ((ROUTE, []), ("route#1#ext-plugin-pre-req#43", [])),
        ((ROUTE, HI), (ROUTE, BYE)),
        (("", []), ("", [])),  # an empty key is never looked up, even with its own conf
    ],
    ids=["unknown-key", "same-key-another-conf", "empty-key"],
)
def test_find_returns_none_for_another_key_another_conf_or_an_empty_key(
    clock: FakeClock, added: tuple[str, list[tuple[str, str]]], asked: tuple[str, list[tuple[str, str]]]
) -> None:
    cache = make(clock)
    cache.add("prepared", *added)
    assert cache.find(*asked) is None


def test_find_never_returns_an_expired_token(clock: FakeClock) -> None:
    cache = make(clock)
    cache.add("prepared", "key", "conf")
    clock.advance(TTL + 1)
    assert cache.find("key", "conf") is None


def test_find_never_returns_an_evicted_token(clock: FakeClock) -> None:
    cache = make(clock, max_entries=1)
    cache.add("prepared", "key", "conf")
    cache.add("other", "other-key", "other-conf")
    assert cache.find("key", "conf") is None
    assert cache.find("other-key", "other-conf") is not None


def test_find_returns_the_newest_token_after_a_key_is_prepared_again(clock: FakeClock) -> None:
    cache = make(clock)
    old = cache.add("v1", "key", "conf-1")
    new = cache.add("v2", "key", "conf-2")
    assert new != old
    assert cache.find("key", "conf-2") == new
    assert cache.find("key", "conf-1") is None
    assert cache.get(old) == "v1"  # the old token stays usable until it expires


def test_expiry_of_an_older_token_keeps_the_newer_key_mapping(clock: FakeClock) -> None:
    cache = make(clock)
    old = cache.add("v1", "key", "conf-1")
    clock.advance(TTL / 2)
    new = cache.add("v2", "key", "conf-2")
    clock.advance(TTL / 2 + 1)  # old has expired, new has not
    with pytest.raises(TokenNotFound):
        cache.get(old)
    assert cache.find("key", "conf-2") == new


# --- threads --------------------------------------------------------------------------------


def test_concurrent_adds_and_gets_issue_unique_tokens() -> None:
    cache: ConfCache[tuple[int, int]] = ConfCache(TTL, max_entries=100_000)
    workers, per_worker = 8, 400
    start = threading.Barrier(workers)
    issued: list[list[int]] = [[] for _ in range(workers)]

    def work(n: int) -> None:
        start.wait(timeout=30)
        for i in range(per_worker):
            token = cache.add((n, i), f"key-{n}-{i}", (n, i))
            issued[n].append(token)
            assert cache.get(token) == (n, i)
            assert cache.find(f"key-{n}-{i}", (n, i)) == token

    run_in_threads(work, [(n,) for n in range(workers)])
    tokens = [t for ts in issued for t in ts]
    assert len(tokens) == workers * per_worker
    assert len(set(tokens)) == len(tokens)
    assert 0 not in tokens
    assert len(cache) == len(tokens)
