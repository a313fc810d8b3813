"""The llama.cpp decode loop: in-flight batching of many sequences in one context, on one thread.

Requests join and leave between steps. A step feeds every sequence's unprocessed tokens (one
token for a decoding sequence, a chunk of prompt for a prefilling one) to a single llama_decode,
then samples each sequence that reached its end with its own seeded sampler. A new prompt
that shares a prefix with a sequence already in the KV memory copies that KV instead of
prefilling it again; finished sequences stay in memory as a prefix cache until their slot is
needed, so a stream resumed after a code cell only prefills what is new.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import queue
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

from aimo_infer.backends.base import FinishReason, GenerationRequest, StreamDelta, TokenLogprob
from aimo_infer.backends.cpu_share import ThreadGovernor
from aimo_infer.backends.sampling import RowSampler
from aimo_infer.backends.streaming import StopMatcher

if TYPE_CHECKING:
    from aimo_infer.backends.llamacpp_runtime import LlamaRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaSink:
    """Where a request's deltas go: an asyncio queue, fed from this thread through its loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[StreamDelta]


@dataclass(frozen=True)
class Submit:
    request: GenerationRequest
    sink: DeltaSink


@dataclass(frozen=True)
class Cancel:
    request_id: str
    done: Callable[[], None] | None = None


@dataclass(frozen=True)
class Shutdown:
    done: Callable[[], None] | None = None


Command = Submit | Cancel | Shutdown


@dataclass
class LoopStats:
    """Token counters, for tests and reports."""

    prompt_tokens: int = 0  # prompt tokens of all admitted requests
    prefilled_tokens: int = 0  # of those, tokens actually run through the model
    reused_tokens: int = 0  # of those, tokens whose KV came from another sequence
    generated_tokens: int = 0
    steps: int = 0
    passes: int = 0  # passes over the weights: a step costs one per run of consecutive ids
    moves: int = 0  # running sequences moved down into a gap (see DecodeLoop._compact)
    threads: int = 0  # llama.cpp threads now decoding
    thread_changes: int = 0  # times that count changed for other processes' CPU use (cpu_share)


@dataclass(eq=False)
class LiveSequence:
    """One request being served: its tokens, where its KV stands, and its text state."""

    request: GenerationRequest
    sink: DeltaSink
    seq_id: int
    tokens: list[int]  # prompt, then sampled tokens; tokens[:n_past] are in the KV memory
    n_prompt: int
    n_past: int
    max_tokens: int
    sampler: RowSampler
    stops: StopMatcher
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: utf8_decoder())
    n_generated: int = 0
    unsent_tokens: int = 0  # sampled tokens whose text has not gone out yet
    unsent_ids: list[int] = field(default_factory=list)  # and their ids (token-out)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, if asked for

    @property
    def prefilling(self) -> bool:
        return self.n_past < self.n_prompt

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        """The logprobs of the tokens about to go out, once."""
        taken, self.unsent_logprobs = tuple(self.unsent_logprobs), []
        return taken


def utf8_decoder() -> codecs.IncrementalDecoder:
    """Bytes to text across token boundaries: a character split over tokens waits for its rest."""
    return codecs.getincrementaldecoder("utf-8")("replace")


def common_prefix_len(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit`` (slice compares, in C)."""
    hi = min(len(a), len(b), limit)
    if hi <= 0:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 0  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _deliver(items: list[tuple[asyncio.Queue[StreamDelta], StreamDelta]]) -> None:
    for q, delta in items:
        q.put_nowait(delta)


class DecodeLoop:
    """Owns the runtime once started; ``post`` is the only method other threads may call."""

    def __init__(
        self,
        runtime_factory: Callable[[], LlamaRuntime],
        prefix_cache: bool,
        min_prefix_tokens: int,
        on_finished: Callable[[GenerationRequest], None],
    ) -> None:
        self._factory = runtime_factory
        self._prefix_cache = prefix_cache
        self._min_prefix = max(1, min_prefix_tokens)
        self._on_finished = on_finished
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._pending: list[tuple[Submit, list[int] | None]] = []
        self._active: list[LiveSequence] = []
        self._by_id: dict[str, LiveSequence] = {}
        self._cached: OrderedDict[int, list[int]] = OrderedDict()  # seq id -> tokens in KV, LRU
        self._free_ids: list[int] = []
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, StreamDelta]]] = {}
        self._shutdown_done: list[Callable[[], None]] = []
        self._stopping = False
        self.stats = LoopStats()
        self.rt: LlamaRuntime | None = None
        self.governor: ThreadGovernor | None = None
        self.n_ctx_seq = 0
        self.batch_invariant = True  # read from the runtime once loaded

    def post(self, command: Command) -> None:
        """Hand a command to the loop (thread-safe)."""
        self._commands.put(command)

    # -- thread body -----------------------------------------------------------------------------

    def run(self, ready: Callable[[BaseException | None], None]) -> None:
        """Load the model, report readiness, then serve commands until shut down."""
        try:
            self.rt = self._factory()
        except BaseException as exc:
            ready(exc)
            return
        self.n_ctx_seq = self.rt.n_ctx_seq
        self.batch_invariant = self.rt.batch_invariant
        self._free_ids = list(range(self.rt.settings.n_seq_max - 1, -1, -1))
        if self.rt.settings.adapt_threads:
            self.governor = ThreadGovernor.for_this_process(self.rt.settings.n_threads)
        self.stats.threads = self.rt.settings.n_threads
        ready(None)
        try:
            while not self._stopping:
                self._drain_commands(block=not (self._active or self._pending))
                if self._stopping:
                    break
                self._admit()
                if self._active:
                    self._step()
                    self._adapt_threads()
                self._flush()
        except BaseException as exc:
            log.exception("llama.cpp decode loop failed")
            self._fail_everything("cancelled", f"llama.cpp decode loop failed: {exc}")
            raise
        finally:
            self._close()

    def _adapt_threads(self) -> None:
        if self.governor is not None and self.rt is not None:
            threads = self.governor.update()
            if threads is not None:
                self.rt.set_threads(threads)
                self.stats.threads = threads
                self.stats.thread_changes += 1
                log.debug("llama.cpp now decodes on %d thread(s)", threads)

    def _drain_commands(self, block: bool) -> None:
        if block:
            self._handle(self._commands.get())
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            self._handle(command)

    def _handle(self, command: Command) -> None:
        if isinstance(command, Submit):
            self._pending.append((command, None))
        elif isinstance(command, Cancel):
            self._cancel(command.request_id)
            if command.done is not None:
                command.done()
        else:
            self._stopping = True
            if command.done is not None:
                self._shutdown_done.append(command.done)

    def _cancel(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            self._finish(seq, "cancelled", "")
            return
        for i, (submit, _tokens) in enumerate(self._pending):
            if submit.request.request_id == request_id:
                del self._pending[i]
                self._end_unadmitted(submit, "cancelled", None)
                return

    def _close(self) -> None:
        self._fail_everything("cancelled", None)
        self._flush()
        self._cached.clear()
        if self.rt is not None:
            self.rt.close()
        while True:  # answer commands that raced with the shutdown
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Submit):
                self._end_unadmitted(command, "cancelled", None)
            elif command.done is not None:
                command.done()
        self._flush()
        for done in self._shutdown_done:
            done()

    def _fail_everything(self, reason: FinishReason, error: str | None) -> None:
        for seq in list(self._active):
            self._finish(seq, reason, "", error, keep_kv=False)
        for submit, _tokens in self._pending:
            self._end_unadmitted(submit, reason, error)
        self._pending.clear()

    # -- admission -------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Start pending requests while sequence slots last, reusing shared prompt prefixes."""
        pending, self._pending = self._pending, []
        for index, (submit, known_tokens) in enumerate(pending):
            tokens = known_tokens if known_tokens is not None else self._prompt_tokens(submit)
            if tokens is None:
                continue
            donor, shared = self._best_donor(tokens)
            if self._prefill_in_flight(tokens, shared):
                self._pending.append((submit, tokens))  # copy that KV once it is computed
                continue
            seq_id = self._take_seq_id(donor)
            if seq_id is None:  # every slot is busy: wait, keeping arrival order
                self._pending.append((submit, tokens))
                self._pending.extend(pending[index + 1 :])
                return
            self._start(submit, tokens, seq_id, donor, shared)
        self._compact()

    def _prompt_tokens(self, submit: Submit) -> list[int] | None:
        """The request's prompt as token ids, or None after ending it with a clear error."""
        assert self.rt is not None
        request = submit.request
        if request.prompt_token_ids is not None:
            tokens = list(request.prompt_token_ids)
            bad = [t for t in tokens if not 0 <= t < self.rt.n_vocab]
            if bad:
                self._end_unadmitted(
                    submit, "error", f"prompt token id {bad[0]} is not in the vocabulary"
                )
                return None
        else:
            tokens = self.rt.tokenize(request.prompt or "")
        if not tokens:
            self._end_unadmitted(submit, "error", "the prompt is empty")
            return None
        if len(tokens) >= self.n_ctx_seq:
            self._end_unadmitted(
                submit,
                "error",
                f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx_seq}",
            )
            return None
        return tokens

    def _best_donor(self, tokens: list[int]) -> tuple[int | None, int]:
        """The sequence whose KV shares the longest prefix with ``tokens`` (cached ones first)."""
        if not self._prefix_cache:
            return None, 0
        limit = len(tokens) - 1  # the last prompt token is always run, for its logits
        best_id: int | None = None
        best = 0
        for seq_id, kv_tokens in self._cached.items():
            n = common_prefix_len(kv_tokens, tokens, limit)
            if n > best:
                best_id, best = seq_id, n
        for seq in self._active:
            if not seq.prefilling:
                n = common_prefix_len(seq.tokens, tokens, min(limit, seq.n_past))
                if n > best:
                    best_id, best = seq.seq_id, n
        if best < self._min_prefix:
            return None, 0
        return best_id, best

    def _prefill_in_flight(self, tokens: list[int], shared: int) -> bool:
        """Whether a sequence still prefilling will soon offer a clearly longer shared prefix."""
        if not self._prefix_cache:
            return False
        wanted = shared + self._min_prefix
        return any(
            seq.prefilling
            and common_prefix_len(seq.tokens, tokens, min(seq.n_prompt, len(tokens) - 1)) >= wanted
            for seq in self._active
        )

    def _take_seq_id(self, donor: int | None) -> int | None:
        """A free sequence slot: a cached donor is adopted, else the lowest free id, else the
        oldest cache. Low ids first keep the running ids consecutive (see ``_step``)."""
        if donor is not None and donor in self._cached:
            del self._cached[donor]
            return donor
        return self._empty_slot(min)

    def _start(
        self, submit: Submit, tokens: list[int], seq_id: int, donor: int | None, shared: int
    ) -> None:
        assert self.rt is not None
        request = submit.request
        if donor == seq_id:
            self.rt.truncate(seq_id, shared)
        elif donor is not None:
            self.rt.copy_prefix(donor, seq_id, shared)
        sampler = self.rt.new_sampler(
            seed=request.seed,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
        )
        seq = LiveSequence(
            request=request,
            sink=submit.sink,
            seq_id=seq_id,
            tokens=tokens,
            n_prompt=len(tokens),
            n_past=shared,
            max_tokens=min(request.max_tokens, self.n_ctx_seq - len(tokens)),
            sampler=sampler,
            stops=StopMatcher(request.stop),
        )
        self._active.append(seq)
        self._by_id[request.request_id] = seq
        self.stats.prompt_tokens += len(tokens)
        self.stats.reused_tokens += shared

    # -- one step --------------------------------------------------------------------------------

    def _step(self) -> None:
        """One llama_decode over all sequences, then one sampled token per sequence at its end."""
        assert self.rt is not None
        budget = self.rt.settings.n_batch
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        outputs: list[bool] = []
        fed: list[tuple[LiveSequence, int]] = []
        to_sample: list[tuple[LiveSequence, int]] = []
        # Decoding sequences go first so that a long prompt never stalls them, each group by
        # sequence id: with one KV stream per sequence llama.cpp runs a batch as one pass over
        # the weights only while the ids it meets are consecutive (every break costs a pass).
        by_id = sorted(self._active, key=lambda s: s.seq_id)
        order = [s for s in by_id if not s.prefilling] + [s for s in by_id if s.prefilling]
        for seq in order:
            start = seq.n_past
            end = min(len(seq.tokens), start + budget)
            n = end - start
            if n <= 0:
                continue
            tokens.extend(seq.tokens[start:end])
            positions.extend(range(start, end))
            seq_ids.extend([seq.seq_id] * n)
            outputs.extend([False] * n)
            if end == len(seq.tokens):
                outputs[-1] = True
                to_sample.append((seq, len(tokens) - 1))
            fed.append((seq, n))
            budget -= n
            if budget == 0:
                break
        rc = self.rt.decode(tokens, positions, seq_ids, outputs)
        if rc == self.rt.NO_KV_SLOT:
            self._make_room()
            return
        if rc != 0:
            for seq, _n in fed:
                self._finish(seq, "error", "", f"llama_decode failed with code {rc}", keep_kv=False)
            return
        self.stats.steps += 1
        self.stats.passes += 1 + sum(1 for a, b in pairwise(seq_ids) if b - a not in (0, 1))
        for seq, n in fed:
            if seq.prefilling:
                self.stats.prefilled_tokens += min(n, seq.n_prompt - seq.n_past)
            seq.n_past += n
        for seq, row in to_sample:
            if seq.request.logprobs > 0:
                token, logprob = self.rt.sample_with_logprobs(seq.sampler, row, seq.request.logprobs)
                seq.unsent_logprobs.append(logprob)
                self._accept(seq, token)
            else:
                self._accept(seq, self.rt.sample(seq.sampler, row))

    def _make_room(self) -> None:
        """The KV memory is full: drop the prefix cache, else end the longest sequence."""
        assert self.rt is not None
        if self._cached:
            while self._cached:
                self._free_ids.append(self._evict_oldest_cache())
            return
        longest = max(self._active, key=lambda s: s.n_past)
        self._finish(longest, "length", longest.decoder.decode(b"", True))

    def _accept(self, seq: LiveSequence, token: int) -> None:
        """Turn one sampled token into text, and end the sequence when it should end."""
        assert self.rt is not None
        seq.tokens.append(token)
        seq.n_generated += 1
        seq.unsent_tokens += 1
        seq.unsent_ids.append(token)
        self.stats.generated_tokens += 1
        if self.rt.is_eog(token) or token in seq.request.stop_token_ids:
            self._finish(seq, "stop", seq.decoder.decode(b"", True))
            return
        text = seq.decoder.decode(self.rt.piece(token))
        if text:
            text, matched = seq.stops.feed(text)
            if matched is not None:
                self._finish(seq, "stop", text)
                return
        if seq.n_generated >= seq.max_tokens:
            self._finish(seq, "length", text + seq.decoder.decode(b"", True))
            return
        if text:
            self._emit(seq.sink, StreamDelta(text, seq.unsent_tokens,
                                             token_ids=tuple(seq.unsent_ids),
                                             logprobs=seq.take_logprobs()))
            seq.unsent_tokens = 0
            seq.unsent_ids = []

    # -- endings and delivery --------------------------------------------------------------------

    def _finish(
        self,
        seq: LiveSequence,
        reason: FinishReason,
        text: str,
        error: str | None = None,
        keep_kv: bool = True,
    ) -> None:
        """End a sequence: keep its KV as prefix cache or drop it, send the end."""
        assert self.rt is not None
        self._active.remove(seq)
        del self._by_id[seq.request.request_id]
        # A cancelled sequence's KV is kept too: the solve loop cancels a stream once it has
        # written a code block, and resumes it after the cell with the same text in front.
        if keep_kv and self._prefix_cache and seq.n_past > 0:
            self._cached[seq.seq_id] = seq.tokens[: seq.n_past]
        else:
            self.rt.truncate(seq.seq_id, 0)
            self._free_ids.append(seq.seq_id)
        self._on_finished(seq.request)
        self._emit(seq.sink, StreamDelta(text, seq.unsent_tokens, reason, error,
                                         token_ids=tuple(seq.unsent_ids),
                                         logprobs=seq.take_logprobs()))
        self._compact()

    def _compact(self) -> None:
        """Keep the running sequences on the lowest ids: move the highest one into any gap.

        With one KV stream per sequence llama.cpp passes over the weights once per run of
        consecutive running ids, so a gap costs a pass at every step (about 15 ms here) while a
        move costs one buffer copy at the next decode (about 20 ms). A cache in the gap moves to
        a spare slot (or, with none, is dropped).
        """
        assert self.rt is not None
        while self._active:
            running = {s.seq_id for s in self._active}
            gap = min(set(range(len(running) + 1)) - running)
            top = max(self._active, key=lambda s: s.seq_id)
            if top.seq_id < gap:
                return
            if gap in self._cached:
                tokens = self._cached.pop(gap)
                spare = self._empty_slot(max)  # caches park on high ids
                if spare is None:
                    self.rt.truncate(gap, 0)
                else:
                    self.rt.move(gap, spare)
                    self._cached[spare] = tokens
            else:
                self._free_ids.remove(gap)
            self.rt.move(top.seq_id, gap)
            self._free_ids.append(top.seq_id)
            top.seq_id = gap
            self.stats.moves += 1

    def _empty_slot(self, pick: Callable[[list[int]], int]) -> int | None:
        """An empty slot: ``pick`` (min or max) of the free ids, else the oldest cache's slot."""
        if self._free_ids:
            chosen = pick(self._free_ids)
            self._free_ids.remove(chosen)
            return chosen
        return self._evict_oldest_cache() if self._cached else None

    def _evict_oldest_cache(self) -> int:
        """Drop the least recently finished sequence's KV; return its now empty slot."""
        assert self.rt is not None
        seq_id, _tokens = self._cached.popitem(last=False)
        self.rt.truncate(seq_id, 0)
        return seq_id

    def _end_unadmitted(self, submit: Submit, reason: FinishReason, error: str | None) -> None:
        self._on_finished(submit.request)
        self._emit(submit.sink, StreamDelta("", 0, reason, error))

    def _emit(self, sink: DeltaSink, delta: StreamDelta) -> None:
        self._outbox.setdefault(sink.loop, []).append((sink.queue, delta))

    def _flush(self) -> None:
        """One thread-safe wake-up per event loop per step carries all of that loop's deltas."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody reads these streams
                for seq in [s for s in self._active if s.sink.loop is loop]:
                    self._finish(seq, "cancelled", "", keep_kv=False)
