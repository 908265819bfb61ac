"""Claude through the official ``anthropic`` SDK.

The SDK's own retries are switched off (``max_retries=0``) because this
provider needs more than they offer: every attempt goes through an adaptive
limiter that shrinks on 429/529 and shares the server's ``retry-after`` with
all other callers, usage is summed over every attempt that returned a body,
and an unusable answer (garbage instead of the tool call) is retried once with
a corrective note. Errors are :class:`~worker.llm.base.LLMError` kinds with messages
scrubbed of anything that looks like an API key, because they end up in the
``error`` columns operators read.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import anthropic
from anthropic.types import Message

from jobs.domain.facts import Facts
from jobs.domain.memory import memory_sections, normalise_memory
from jobs.domain.sections import Sections
from worker.llm.base import (
    ExtractionInput,
    LLMError,
    LLMResult,
    ModelRefused,
    ModelUnavailable,
    UnusableAnswer,
    Usage,
)
from worker.llm.budget import FleetBudget
from worker.llm.limiter import (
    AdaptiveLimiter,
    Permit,
    check_guard,
    global_limiter,
    scope_limiter,
)
from worker.llm.parse import BadAnswer, answer_text, parse_facts, parse_sections
from worker.llm.prompts import (
    CONSOLIDATION_SYSTEM,
    EXTRACTION_SYSTEM,
    MEMORY_SYSTEM,
    RECORD_FACTS,
    RECORD_FACTS_TOOL,
    SECTIONS_SYSTEM,
    WRITE_SECTIONS,
    WRITE_SECTIONS_TOOL,
    consolidation_message,
    corrective_note,
    extraction_message,
    memory_message,
    sections_message,
)
from worker.redact import redact, register_secrets
from worker.retry import backoff
from worker.settings import Settings

logger = logging.getLogger("fullpass.llm")

R = TypeVar("R")
T = TypeVar("T")

EXTRACT_MAX_TOKENS: Final = 4096
CONSOLIDATE_MAX_TOKENS: Final = 16_000
MEMORY_MAX_TOKENS: Final = 8192
SECTIONS_MAX_TOKENS: Final = 8192
EXTRACT_TEMPERATURE: Final = 0.3
MEMORY_TEMPERATURE: Final = 0.5
#: Input budget of the sections call (~4 chars a token): MEMORY plus excerpts
#: stay well inside a 200K-token context window with room for the answer.
SECTIONS_BUDGET_CHARS: Final = 120_000 * 4
#: The Message Batches API's limits on one batch and on a ``custom_id``.
MAX_BATCH_REQUESTS: Final = 100_000
_CUSTOM_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: 4xx statuses that are about the account or configuration, not the request.
_SERVICE_STATUSES: Final = frozenset({401, 402, 403, 404})

#: ``_Answer.problem`` when the model refused the ``temperature`` parameter.
_SAMPLING_REJECTED: Final = "temperature rejected"

_MAX_ERROR_CHARS: Final = 300


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: ``retry-after-ms``, ``retry-after`` seconds or date."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def usage_of(message: Message) -> Usage:
    """The token usage of one answer, as one call."""
    usage = getattr(message, "usage", None)
    if usage is None:
        return Usage()
    return Usage(
        input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        cache_read_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        cache_creation_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        calls=1,
    )


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed HTTP attempt, classified."""

    message: str
    retryable: bool
    #: What it means once retries are over.
    kind: type[LLMError]
    overload: bool = False
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Answer:
    """A 2xx answer: the message, or why the body is not one (and what it cost)."""

    message: Message | None
    problem: str = ""
    usage: Usage = field(default_factory=Usage)


_USAGE_OBJECT: Final = re.compile(r'"usage"\s*:\s*(\{[^{}]*\})')


def usage_in_text(body: str) -> Usage:
    """The usage of an answer whose body cannot be decoded whole (too deep, cut short).

    The top-level ``usage`` object is flat, so it is found and decoded on its
    own: a billed answer is counted even when its content is unusable.
    """
    found = _USAGE_OBJECT.findall(body[-4096:]) or _USAGE_OBJECT.findall(body)
    if not found:
        return Usage()
    try:
        data = json.loads(found[-1])
    except ValueError:
        return Usage()
    if not isinstance(data, dict):
        return Usage()

    def count(key: str) -> int:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Usage(
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
        cache_read_tokens=count("cache_read_input_tokens"),
        cache_creation_tokens=count("cache_creation_input_tokens"),
        calls=1,
    )


def _http_client(settings: Settings) -> anthropic.DefaultAioHttpClient:
    """The SDK's aiohttp transport (the ``anthropic[aiohttp]`` extra).

    Its C HTTP parser spends ~40 % less CPU per call than the default httpx
    transport (3.6 vs 5.8 ms on a 45 KB request): the event loop that sends
    the calls also parses every answer, and at ten calls in flight that CPU
    is what delays the next send. aiohttp sets TCP_NODELAY on its sockets, so
    a request's body never waits on a delayed ACK of its headers.
    """
    return anthropic.DefaultAioHttpClient()


class AnthropicProvider:
    """:class:`~worker.llm.base.LLMProvider` backed by the Claude Messages API.

    A request made inside :func:`~worker.llm.limiter.llm_scope` (every stage and
    lane job runs in its import's) takes a slot of that import's limiter;
    outside any scope, of ``limiter`` (default: an :class:`AdaptiveLimiter` of
    ``settings.options.concurrency``). Every request also passes the
    process-wide limiter of ``settings.global_concurrency`` unless
    ``use_global_limiter`` is false, and, with a ``budget``, draws its request
    and input tokens from the fleet's shared rate budget before it is sent.
    The backoff knobs exist so tests can run retries in milliseconds.
    ``send_temperature`` starts true and turns itself off if the model rejects
    sampling parameters (see :meth:`_create`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        limiter: AdaptiveLimiter | None = None,
        use_global_limiter: bool = True,
        budget: FleetBudget | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        rng: random.Random | None = None,
        send_temperature: bool = True,
    ) -> None:
        self._settings = settings
        self.model = settings.model
        self._price = settings.price_of(self.model)
        #: This provider for each model it was asked for (:meth:`with_model`).
        self._variants: dict[str, AnthropicProvider] = {self.model: self}
        register_secrets(settings.secrets())
        if client is None:
            key = settings.anthropic_api_key
            if key is None or not key.get_secret_value():
                raise ModelRefused("ANTHROPIC_API_KEY is not set (use FULLPASS_LLM=offline)")
            client = anthropic.AsyncAnthropic(
                api_key=key.get_secret_value(),
                base_url=settings.anthropic_base_url,
                timeout=settings.llm_timeout,
                max_retries=0,
                http_client=_http_client(settings),
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self.limiter = limiter or AdaptiveLimiter(settings.options.concurrency)
        self._use_global = use_global_limiter
        #: The fleet's shared rate budget (None: this worker's own limits only).
        self.budget = budget
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._rng = rng or random.Random()
        #: Whether requests carry ``temperature`` (turned off for good the
        #: first time the model rejects it; see :meth:`_create`).
        self.send_temperature = send_temperature

    def with_model(self, model: str) -> AnthropicProvider:
        """This provider calling ``model``: same client, limiters and settings.

        One per model for the provider's life (so a model that rejects
        ``temperature`` is learnt once); closing it closes nothing.
        """
        variant = self._variants.get(model)
        if variant is None:
            variant = copy.copy(self)
            variant.model = model
            variant._price = self._settings.price_of(model)
            variant._owns_client = False
            variant.send_temperature = True
            self._variants[model] = variant
        return variant

    def _priced(self, usage: Usage, *, batch: bool = False) -> Usage:
        return usage.priced(self._price, batch=batch)

    # ------------------------------------------------------------------ protocol

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        return await self._ask(self._extract_params(item), self._parse_facts, RECORD_FACTS)

    async def consolidate(self, facts: Facts) -> LLMResult[Facts]:
        params = self._tool_params(
            CONSOLIDATION_SYSTEM,
            consolidation_message(facts),
            RECORD_FACTS_TOOL,
            max_tokens=CONSOLIDATE_MAX_TOKENS,
            temperature=EXTRACT_TEMPERATURE,
        )
        return await self._ask(params, self._parse_facts, RECORD_FACTS)

    async def write_memory(self, facts: Facts) -> LLMResult[str]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": MEMORY_MAX_TOKENS,
            "temperature": MEMORY_TEMPERATURE,
            "system": _cached_system(MEMORY_SYSTEM),
            "messages": [{"role": "user", "content": memory_message(facts)}],
        }

        def parse(message: Message) -> str:
            text = answer_text(message.content)
            bodies, _ = memory_sections(text)
            if not bodies:
                raise BadAnswer("no MEMORY sections in the answer")
            return normalise_memory(text, facts)

        return await self._ask(params, parse, None)

    async def write_sections(self, memory: str, samples: list[str]) -> LLMResult[Sections]:
        params = self._tool_params(
            SECTIONS_SYSTEM,
            sections_message(memory, samples, budget_chars=SECTIONS_BUDGET_CHARS),
            WRITE_SECTIONS_TOOL,
            max_tokens=SECTIONS_MAX_TOKENS,
            temperature=MEMORY_TEMPERATURE,
        )
        return await self._ask(
            params, lambda m: parse_sections(m.content, WRITE_SECTIONS), WRITE_SECTIONS
        )

    async def aclose(self) -> None:
        if self.budget is not None:
            await self.budget.aclose()
        if self._owns_client:
            await self._client.close()

    # ------------------------------------------------------------------ batches

    async def submit_batch(self, items: list[ExtractionInput]) -> str:
        """Submit extraction requests as one Message Batch; ``custom_id`` = chunk id.

        Batches cost half as much and have their own rate limits, at the price
        of latency (minutes to hours). Returns the batch id.
        """
        if not items:
            raise ValueError("a batch needs at least one item")
        if len(items) > MAX_BATCH_REQUESTS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_REQUESTS} requests")
        ids = [item.chunk_id for item in items]
        bad = [i for i in ids if not _CUSTOM_ID.match(i)]
        if bad:
            raise ValueError(f"chunk ids unusable as batch custom_id: {bad[:3]}")
        if len(set(ids)) != len(ids):
            raise ValueError("chunk ids in a batch must be unique")
        requests = [
            {"custom_id": item.chunk_id, "params": self._batch_params(item)} for item in items
        ]
        batch = await self._send(
            "batch create",
            lambda: self._client.messages.batches.create(requests=cast(Any, requests)),
        )
        return batch.id

    async def batch_status(self, batch_id: str) -> str:
        """``in_progress``, ``canceling`` or ``ended``."""
        batch = await self._send(
            "batch status", lambda: self._client.messages.batches.retrieve(batch_id)
        )
        return str(batch.processing_status)

    async def batch_results(
        self, batch_id: str
    ) -> AsyncIterator[tuple[str, LLMResult[Facts] | LLMError]]:
        """Each request's outcome, parsed like :meth:`extract_facts` (without its retry).

        A request that errored, expired or was cancelled, or whose answer is
        unusable, yields an :class:`LLMError` so the caller can retry that chunk
        online.
        """
        decoder = await self._send(
            "batch results", lambda: self._client.messages.batches.results(batch_id)
        )
        try:
            async for entry in decoder:
                yield entry.custom_id, self._batch_outcome(entry.result)
        except Exception as exc:
            # The stream can break mid-way (SDK, transport or decoding errors
            # alike); the caller sees one safe, retryable error.
            reason = self._safe(f"reading batch results failed: {type(exc).__name__}: {exc}")
            raise ModelUnavailable(reason) from None
        finally:
            await decoder.close()

    def _batch_outcome(self, result: Any) -> LLMResult[Facts] | LLMError:
        kind = getattr(result, "type", "unknown")
        if kind == "succeeded":
            message = result.message
            usage = self._priced(usage_of(message), batch=True)
            try:
                facts = self._parse_facts(message)
            except BadAnswer as exc:
                return UnusableAnswer(self._safe(f"invalid answer: {exc}"), usage=usage)
            return LLMResult(facts, usage, getattr(message, "model", None) or self.model)
        if kind == "errored":
            error = getattr(getattr(result, "error", None), "error", None)
            etype = getattr(error, "type", "error")
            text = getattr(error, "message", "")
            return UnusableAnswer(self._safe(f"batch request errored: {etype}: {text}"))
        return UnusableAnswer(f"batch request {kind}")

    # ------------------------------------------------------------------ requests

    def _extract_params(self, item: ExtractionInput) -> dict[str, Any]:
        return self._tool_params(
            EXTRACTION_SYSTEM,
            extraction_message(item),
            RECORD_FACTS_TOOL,
            max_tokens=EXTRACT_MAX_TOKENS,
            temperature=EXTRACT_TEMPERATURE,
        )

    def _batch_params(self, item: ExtractionInput) -> dict[str, Any]:
        """Batch request params: a plain JSON body, so ``temperature`` goes in directly."""
        params = self._extract_params(item)
        if not self.send_temperature:
            params.pop("temperature", None)
        return params

    def _tool_params(
        self,
        system: str,
        user: str,
        tool: dict[str, Any],
        *,
        max_tokens: int,
        temperature: float,
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "system": _cached_system(system),
            "tools": [tool],
            "tool_choice": {"type": "tool", "name": tool["name"]},
            "messages": [{"role": "user", "content": user}],
        }

    @staticmethod
    def _parse_facts(message: Message) -> Facts:
        return parse_facts(message.content, RECORD_FACTS)

    async def _ask(
        self, params: dict[str, Any], parse: Callable[[Message], T], tool: str | None
    ) -> LLMResult[T]:
        """One logical call: transport retries, then one corrective retry if unusable."""
        usage = Usage()
        reason = ""
        for attempt in range(2):
            request = params if attempt == 0 else _with_note(params, corrective_note(reason, tool))
            try:
                answer = await self._create(request)
            except LLMError as exc:
                raise type(exc)(
                    str(exc), usage=usage + exc.usage, retry_after=exc.retry_after
                ) from None
            if answer.message is None:
                reason = answer.problem
                usage += self._priced(answer.usage)
            else:
                usage += self._priced(usage_of(answer.message))
                try:
                    value = parse(answer.message)
                except BadAnswer as exc:
                    reason = str(exc)
                except Exception as exc:  # too deep, too odd: this answer only is unusable
                    reason = f"answer could not be read ({type(exc).__name__})"
                else:
                    return LLMResult(value, usage, answer.message.model or self.model)
            logger.info("unusable answer (attempt %d): %s", attempt + 1, self._safe(reason))
        raise UnusableAnswer(self._safe(f"invalid answer: {reason}"), usage=usage)

    async def _create(self, params: dict[str, Any]) -> _Answer:
        """One Messages call (with transport retries) returning the answer or its problem.

        ``temperature`` is no longer a keyword of the SDK's ``create`` (the 1.x
        SDKs dropped sampling parameters from their signatures), so it goes in
        ``extra_body``. Models that reject it answer 400 naming the parameter;
        then it is dropped for the rest of this provider's life and the call
        is repeated once without it, instead of failing every call.
        """
        while True:
            kwargs = dict(params)
            temperature = kwargs.pop("temperature", None)
            sampling = temperature is not None and self.send_temperature
            if sampling:
                kwargs["extra_body"] = {"temperature": temperature}

            tokens = estimate_input_tokens(kwargs) if self.budget is not None else None

            async def call(
                kwargs: dict[str, Any] = kwargs,
                sampling: bool = sampling,
                tokens: int | None = tokens,
            ) -> _Answer:
                try:
                    raw = await self._client.messages.with_raw_response.create(**kwargs)
                except anthropic.BadRequestError as exc:
                    if sampling and "temperature" in str(exc.api_message or exc.message):
                        return _Answer(None, _SAMPLING_REJECTED)
                    raise
                answer = await _read(raw)
                if self.budget is not None and tokens is not None:
                    usage = usage_of(answer.message) if answer.message else answer.usage
                    counted = usage.input_tokens + usage.cache_creation_tokens
                    self.budget.observe(raw.headers, drawn=tokens, counted=counted or None)
                return answer

            answer = await self._send("messages", call, tokens=tokens)
            if answer.problem != _SAMPLING_REJECTED:
                return answer
            logger.warning("model %s rejects temperature; sending requests without it", self.model)
            self.send_temperature = False

    async def _send(
        self, what: str, call: Callable[[], Awaitable[R]], *, tokens: int | None = None
    ) -> R:
        """Run ``call`` with limiter slots, retrying transient failures with backoff.

        ``tokens``: a Messages call of about that many input tokens, drawn from
        the fleet's budget (if any) before each attempt.
        """
        attempts = max(1, self._settings.llm_max_retries + 1)
        for attempt in range(attempts):
            permits = await self._acquire()
            failure: _Failure | None = None
            try:
                if tokens is not None and self.budget is not None:
                    await self.budget.draw(tokens)
                await check_guard()  # the job still owns its stage, after any wait
                result = await call()
            except anthropic.APIStatusError as exc:
                failure = self._classify(exc)
                if tokens is not None and self.budget is not None:
                    self._budget_refused(exc, failure, tokens)
            except anthropic.APITimeoutError:
                failure = _Failure("request timed out", retryable=True, kind=ModelUnavailable)
            except anthropic.APIConnectionError as exc:
                failure = _Failure(
                    f"connection error: {exc}", retryable=True, kind=ModelUnavailable
                )
            except anthropic.AnthropicError as exc:
                # Credentials, configuration, a batch without results yet:
                # nothing to do with the request's content.
                failure = _Failure(
                    f"{type(exc).__name__}: {exc}", retryable=False, kind=ModelUnavailable
                )
            except BaseException:
                _release(permits, success=False)
                raise
            if failure is None:
                _release(permits, success=True)
                return result
            if failure.overload:
                for permit in permits:
                    permit.overloaded(failure.retry_after)
            _release(permits, success=False)
            message = self._safe(failure.message)
            if not failure.retryable:
                raise failure.kind(message, retry_after=failure.retry_after)
            if attempt + 1 >= attempts:
                raise failure.kind(
                    f"{message} (gave up after {attempts} attempts)",
                    retry_after=failure.retry_after,
                )
            delay = self._delay(attempt, failure.retry_after)
            logger.warning(
                "%s: %s; retry %d/%d in %.2fs",
                what,
                message,
                attempt + 1,
                attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acquire(self) -> list[Permit]:
        permits = [await (scope_limiter() or self.limiter).acquire()]
        if self._use_global:
            try:
                permits.append(await global_limiter(self._settings.global_concurrency).acquire())
            except BaseException:
                _release(permits, success=False)
                raise
        return permits

    def _budget_refused(
        self, exc: anthropic.APIStatusError, failure: _Failure, tokens: int
    ) -> None:
        """A refused call: its headers correct the budget, a 429 pauses the fleet."""
        assert self.budget is not None
        rate_limited = exc.status_code == 429
        # A refused request counted no tokens (a 429) or is not known to have.
        self.budget.observe(exc.response.headers, drawn=tokens, counted=0)
        if rate_limited and failure.retry_after is not None:
            self.budget.pause(failure.retry_after)

    def _classify(self, exc: anthropic.APIStatusError) -> _Failure:
        status = exc.status_code
        headers = exc.response.headers
        retry_after = retry_after_seconds(headers)
        if retry_after is not None:
            retry_after = min(retry_after, self._max_retry_after)
        retryable = status in (408, 429) or status >= 500
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            retryable = should_retry == "true"
        etype = getattr(exc, "type", None) or "error"
        detail = getattr(exc, "api_message", None) or _short_body(exc.body)
        return _Failure(
            f"Anthropic API {status} {etype}: {detail}".strip().rstrip(":"),
            retryable=retryable,
            # Auth, billing, permission or an unknown model fail every request
            # alike: an operator must act. Any other 4xx is about this request.
            kind=ModelUnavailable
            if retryable
            else ModelRefused
            if status in _SERVICE_STATUSES
            else UnusableAnswer,
            overload=status in (429, 529),
            retry_after=retry_after,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt.

        The server's ``retry-after`` is honoured as a floor (plus up to 10%,
        so waiting callers do not all return in the same millisecond);
        otherwise exponential backoff with jitter.
        """
        if retry_after is not None:
            retry_after += self._rng.uniform(0, min(1.0, 0.1 * retry_after))
        return backoff(
            attempt + 1,
            base=self._backoff_base,
            cap=self._backoff_max,
            retry_after=retry_after,
            rng=self._rng,
        )

    def _safe(self, text: str) -> str:
        text = redact(text)
        if len(text) > _MAX_ERROR_CHARS:
            text = text[: _MAX_ERROR_CHARS - 1] + "…"
        return text


def estimate_input_tokens(params: Mapping[str, Any]) -> int:
    """The input tokens a Messages request will count, at ~4 characters a token.

    What the fleet's budget draws before the call; the answer's usage corrects it.
    """
    chars = len(json.dumps(params.get("tools") or []))
    system = params.get("system") or ""
    blocks = [{"text": system}] if isinstance(system, str) else system
    chars += sum(len(str(b.get("text", ""))) for b in blocks if isinstance(b, dict))
    for message in params.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(b.get("text", ""))) for b in content if isinstance(b, dict))
    return max(1, -(-chars // 4))


async def _read(raw: Any) -> _Answer:
    """The message of a 2xx answer, or why its body is not one (and what it cost)."""
    try:
        message: object = await raw.parse()
    except json.JSONDecodeError:
        return _Answer(None, "response body is not JSON")
    except Exception as exc:  # e.g. RecursionError: nested too deep to decode
        body = await raw.text()
        problem = f"answer could not be read ({type(exc).__name__})"
        return _Answer(None, problem, usage_in_text(body))
    if not isinstance(message, Message):
        return _Answer(None, "response body is not a message")
    return _Answer(message)


def _cached_system(text: str) -> list[dict[str, Any]]:
    """The system prompt as a cacheable block: identical across calls, cached once."""
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def _with_note(params: dict[str, Any], note: str) -> dict[str, Any]:
    """``params`` with ``note`` appended to the user turn as a second text block.

    Appending (rather than replaying the bad answer) keeps the request valid
    even when the bad answer was a tool call, and keeps the cached prefix.
    """
    retry = copy.deepcopy(params)
    turn = retry["messages"][-1]
    content = turn["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    turn["content"] = [*blocks, {"type": "text", "text": note}]
    return retry


def _release(permits: list[Permit], *, success: bool) -> None:
    for permit in reversed(permits):
        permit.release(success=success)


def _short_body(body: object) -> str:
    if body is None:
        return ""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return " ".join(text.split())[:200]
