"""gpt-oss through the Harmony format: render with openai-harmony, run python tool calls by token.

A stream's prompt is the rendered conversation as token ids. The engine generates until
``<|call|>`` or ``<|return|>`` (stop token ids); a ``StreamableParser`` reads the generated ids.
A call to ``python`` runs in the stream's sandbox session, its output is appended as a tool
message in tokens, and generation resumes on prompt + generated ids + tool message + the next
``<|start|>assistant``: exactly what re-rendering the conversation gives, without re-tokenizing
the model's text (which drifts and breaks the engine's prefix cache). The answer comes from the
``final`` channel (from all the text when a stream is cut before it).

Malformed Harmony never crashes a stream: a call to an unknown recipient is answered with a tool
error the model can act on; tokens after a stop token are dropped; a parse error or a message
left open ends the stream with ``error`` = "malformed harmony: ..." and its text still votes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aimo_infer.backends.base import EngineUnavailable, GenerationRequest
from aimo_infer.config import ConfigError, HarmonyConfig
from aimo_infer.solve.confidence import StreamConfidence
from aimo_infer.solve.notebook import notebook_cell
from aimo_infer.solve.stream import CodeCall, Stream, StreamStatus
from aimo_infer.solve.tir import code_limit_reached, execution_feedback
from aimo_infer.vocab import use_offline_vocab

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding, Message

    from aimo_infer.solve.controller import Controller
    from sandbox.api import Session

REASONING_EFFORTS = ("low", "medium", "high")
TOOL_NAME = "python"
FINAL_MARKER = "<|channel|>final<|message|>"
NO_OUTPUT = "[no output: print() what you want to see]"
MALFORMED = "malformed harmony"
INSTALL_HINT = "pip install 'aimo-infer[harmony]' (openai-harmony and bpe-openai)"




def load_encoding() -> HarmonyEncoding:
    """The gpt-oss Harmony encoding, with the vocabulary read offline from the model cache."""
    try:
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding
    except ImportError as exc:
        raise EngineUnavailable(f"the harmony prompt profile needs openai-harmony: {INSTALL_HINT}") \
            from exc
    try:
        use_offline_vocab()
    except RuntimeError as exc:
        raise EngineUnavailable(f"the harmony prompt profile needs its vocabulary: {exc}") from exc
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


class HarmonyRenderer:
    """Conversations and tool messages as token ids, as the gpt-oss chat format defines them."""

    def __init__(self, settings: HarmonyConfig, user_template: str,
                 encoding: HarmonyEncoding | None = None) -> None:
        if settings.reasoning_effort not in REASONING_EFFORTS:
            raise ConfigError(f"solve.harmony.reasoning_effort must be one of "
                             f"{list(REASONING_EFFORTS)}, got {settings.reasoning_effort!r}")
        self.settings = settings
        self.user_template = user_template
        self.encoding = encoding if encoding is not None else load_encoding()
        self.stop_token_ids = tuple(self.encoding.stop_tokens_for_assistant_actions())
        self.call_token = self.encoding.encode("<|call|>", allowed_special="all")[0]
        from openai_harmony import Conversation, Role

        self.assistant_start = tuple(self.encoding.render_conversation_for_completion(
            Conversation.from_messages([]), Role.ASSISTANT))

    def system_message(self) -> Message:
        from openai_harmony import (
            Message,
            ReasoningEffort,
            Role,
            SystemContent,
            ToolNamespaceConfig,
        )

        content = SystemContent.new().with_reasoning_effort(
            ReasoningEffort(self.settings.reasoning_effort.capitalize()))
        if self.settings.system_prompt:
            content = content.with_model_identity(self.settings.system_prompt)
        if self.settings.tool_description:
            content = content.with_tools(ToolNamespaceConfig(
                name=TOOL_NAME, description=self.settings.tool_description, tools=[]))
        else:
            content = content.with_python_tool()
        return Message.from_role_and_content(Role.SYSTEM, content)

    def messages(self, problem: str) -> list[Message]:
        """System and user messages for one problem (no developer message)."""
        from openai_harmony import Message, Role

        user = self.user_template.format(problem=problem, max_code_calls=self.settings.max_tool_turns)
        return [self.system_message(), Message.from_role_and_content(Role.USER, user)]

    def render(self, messages: Sequence[Message]) -> list[int]:
        """The conversation as a prompt for the assistant's next message."""
        from openai_harmony import Conversation, Role

        return self.encoding.render_conversation_for_completion(
            Conversation.from_messages(list(messages)), Role.ASSISTANT)

    def tool_message(self, output: str, channel: str | None, author: str = TOOL_NAME) -> Message:
        """The tool's answer to a call, on the call's channel, addressed to the assistant."""
        from openai_harmony import Author, Message, Role

        message = Message.from_author_and_content(Author.new(Role.TOOL, author), output)
        message = message.with_recipient("assistant")
        return message.with_channel(channel) if channel else message

    def continuation(self, message: Message) -> list[int]:
        """A tool message in tokens, then the start of the assistant's next message."""
        return [*self.encoding.render(message), *self.assistant_start]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.encoding.decode(list(token_ids))


class _Detokenizer:
    """Token ids to text as they arrive; a character split across tokens waits for its end."""

    MAX_PENDING = 4  # a UTF-8 character spans at most 4 byte-level tokens

    def __init__(self, renderer: HarmonyRenderer) -> None:
        self._encoding = renderer.encoding
        self._pending: list[int] = []

    def feed(self, token_ids: Sequence[int]) -> str:
        self._pending += token_ids
        if not self._pending:
            return ""
        try:
            text = self._encoding.decode_utf8(self._pending)
        except Exception:  # an incomplete character: wait for the next token
            if len(self._pending) < self.MAX_PENDING:
                return ""
            text = self._encoding.decode(self._pending)
        self._pending = []
        return text

    def flush(self) -> str:
        text = self._encoding.decode(self._pending) if self._pending else ""
        self._pending = []
        return text


def final_text(text: str) -> str | None:
    """The content of the last ``final`` channel message in decoded text, or None."""
    at = text.rfind(FINAL_MARKER)
    if at < 0:
        return None
    body = text[at + len(FINAL_MARKER):]
    for end in ("<|return|>", "<|end|>"):
        cut = body.find(end)
        if cut >= 0:
            body = body[:cut]
    return body


def answer_text(text: str) -> str:
    """What a Harmony stream's answer is read from: the final channel, else all its text."""
    final = final_text(text)
    return text if final is None else final


@dataclass
class _Segment:
    """One engine request's generated tokens, cut at the first stop token."""

    token_ids: list[int]
    tokens: int = 0
    finish: str = "error"
    error: str | None = None
    stop_token: int | None = None
    dropped: int = 0  # tokens the engine sent after a stop token
    ran_past: bool = False  # the engine went on after a stop token (we cancelled it)


class HarmonyLoop:
    """The solve loop of one stream under the harmony profile (the controller picks it)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        info = controller.engine.info
        if not info.token_io:
            raise EngineUnavailable(
                f"prompt profile 'harmony' needs token-in/token-out (prompt token ids, stop token "
                f"ids, generated token ids); engine {info.name!r} has none: use vllm, openai "
                "(on a vLLM server), llamacpp or replay")
        settings = controller.config.solve.harmony
        self.settings = settings
        self.renderer = HarmonyRenderer(settings, controller.profile.user)
        self._prompts: dict[str, tuple[list[Message], list[int]]] = {}

    def render(self, problem: str) -> str:
        """The prompt as text (for traces); its token ids are kept for the streams."""
        messages = self.renderer.messages(problem)
        ids = self.renderer.render(messages)
        text = self.renderer.decode(ids)
        if len(self._prompts) >= 8:
            self._prompts.pop(next(iter(self._prompts)))
        self._prompts[text] = (messages, ids)
        return text

    async def run(self, problem_id: str, stream: Stream, prompt: str,
                  sessions: list[Session]) -> None:
        """Generate, pause on each ``<|call|>``, run python, append the result, resume."""
        if prompt not in self._prompts:
            raise RuntimeError("harmony: a prompt the loop did not render")
        _, prompt_ids = self._prompts[prompt]
        c = self.controller
        sampling = c.config.solve.sampling
        ids = list(prompt_ids)
        context = c.engine.info.context_length
        tracker = c.confidence.tracker()  # the stream's confidence over its generated tokens
        while stream.end is None:
            remaining = min(sampling.max_tokens - stream.tokens, context - len(ids))
            if remaining <= 0:
                stream.end = "length"
                break
            request = GenerationRequest(
                request_id=f"{problem_id}/{stream.index}/{stream.segments}",
                prompt_token_ids=tuple(ids), seed=stream.seed,
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                min_p=sampling.min_p, max_tokens=remaining,
                stop_token_ids=self.renderer.stop_token_ids, logprobs=c.confidence.logprobs,
            )
            stream.request_id = request.request_id
            stream.segments += 1
            stream.status = StreamStatus.GENERATING
            segment_start = len(stream.text)
            segment = await self._generate(request, stream, tracker)
            ids += segment.token_ids
            c._trace("segment", problem_id=problem_id, stream=stream.index, seed=stream.seed,
                     text=stream.text[segment_start:], tokens=segment.tokens,
                     finish_reason=segment.finish, dropped_tokens=segment.dropped,
                     token_ids=segment.token_ids)  # replayable: the replay engine reads them
            call = self._finish_segment(stream, segment)
            if call is None or stream.end is not None:
                break
            recipient, channel, code = call
            if code_limit_reached(stream.num_code_calls, self.settings.max_tool_turns):
                stream.end = "code_limit"
                break
            stream.status = StreamStatus.EXECUTING
            if recipient == TOOL_NAME:
                feedback = await self._run_code(problem_id, stream, code, sessions)
            else:  # repair: tell the model which tool exists, as the tool it named
                feedback = f"Error: no tool named {recipient!r}; the only tool is {TOOL_NAME}."
                stream.code_calls.append(CodeCall(code, "unknown_recipient", feedback, 0.0))
                c._trace("code", problem_id=problem_id, stream=stream.index, code=code,
                         status="unknown_recipient", feedback=feedback, elapsed_s=0.0)
            message = self.renderer.tool_message(feedback, channel, recipient)
            appended = self.renderer.continuation(message)
            ids += appended
            stream.text += self.renderer.decode(appended)

    async def _generate(self, request: GenerationRequest, stream: Stream,
                        tracker: StreamConfidence | None = None) -> _Segment:
        """Stream one request; token ids after the first stop token are dropped (and the
        request cancelled), so an engine that misses a stop id cannot add text after it."""
        engine = self.controller.engine
        stops = set(request.stop_token_ids)
        segment = _Segment([])
        detok = _Detokenizer(self.renderer)
        async for delta in engine.generate(request):
            if tracker is not None and delta.logprobs and segment.stop_token is None:
                for entry in delta.logprobs:  # entropy-weighted votes need it (AIMO-3 recipe)
                    tracker.add(entry)
            if segment.stop_token is None:
                kept = []
                for token in delta.token_ids:
                    kept.append(token)
                    if token in stops:
                        segment.stop_token = token
                        break
                segment.dropped += len(delta.token_ids) - len(kept)
                segment.token_ids += kept
                segment.tokens += len(kept) if delta.token_ids else delta.num_tokens
                stream.text += detok.feed(kept)
                if segment.stop_token is not None and delta.finish_reason is None:
                    segment.ran_past = True
                    await engine.cancel(request.request_id)
            else:
                segment.dropped += len(delta.token_ids)
            if delta.finish_reason is not None:
                segment.finish, segment.error = delta.finish_reason, delta.error
        stream.text += detok.flush()
        stream.tokens += segment.tokens
        if tracker is not None:
            stream.confidence = tracker.summary().to_record()
        if segment.stop_token is not None and segment.finish == "cancelled" \
                and stream.end is None:
            segment.finish = "stop"  # we cancelled it: the engine ran past the stop token
        return segment

    def _finish_segment(self, stream: Stream,
                        segment: _Segment) -> tuple[str, str | None, str] | None:
        """Parse a segment; return (recipient, channel, code) of a tool call, or None with
        ``stream.end`` set."""
        from openai_harmony import HarmonyError, Role, StreamableParser

        parser = StreamableParser(self.renderer.encoding, Role.ASSISTANT)
        try:
            for token in segment.token_ids:
                parser.process(token)
            if segment.stop_token is None and segment.finish == "stop" and stream.end is None:
                parser.process_eos()  # the engine ended by itself: the last message must be whole
        except HarmonyError as exc:
            if stream.end is None:
                stream.end, stream.error = "error", f"{MALFORMED}: {exc}"
            return None
        if stream.end is not None:  # cut by the controller (deadline, policy)
            return None
        if segment.stop_token is None:
            if segment.finish == "length":
                stream.end = "length"
            elif segment.finish == "stop":
                stream.end, stream.error = "error", (
                    f"{MALFORMED}: the engine stopped without <|return|> or <|call|>")
            else:
                stream.end = "error"
                stream.error = segment.error or f"engine ended the request: {segment.finish}"
            return None
        if segment.dropped or segment.ran_past:
            stream.error = (f"{MALFORMED}: the engine went on after a stop token "
                            f"({segment.dropped} token(s) dropped)")
        if segment.stop_token != self.renderer.call_token:  # <|return|>: the answer
            stream.end = "stop"
            return None
        message = parser.messages[-1] if parser.messages else None
        if message is None or not message.recipient:
            stream.end, stream.error = "error", f"{MALFORMED}: <|call|> without a recipient"
            return None
        code = "".join(getattr(part, "text", "") for part in message.content)
        return message.recipient, message.channel, code

    async def _run_code(self, problem_id: str, stream: Stream, code: str,
                        sessions: list[Session]) -> str:
        c = self.controller
        if not sessions:
            sessions.append(await c.runner.open_session())  # type: ignore[union-attr]
        cell = notebook_cell(code) if self.settings.notebook else code
        result = await sessions[0].run(cell, timeout=self.settings.code_timeout_s)
        feedback = execution_feedback(result, c.config.solve.tir.output_max_chars) or NO_OUTPUT
        stream.code_calls.append(CodeCall(code, result.status, feedback, result.elapsed_s))
        c._trace("code", problem_id=problem_id, stream=stream.index, code=code,
                 status=result.status, feedback=feedback, elapsed_s=result.elapsed_s)
        return feedback
