"""What the SDK-backed providers share: the client's settings, rate-limit retries, the
stream's lifetime, and the SDK's errors told as :class:`ProviderError`.

The ``openai`` and ``anthropic`` SDKs have the same error classes (``APIStatusError``,
``APITimeoutError``, ``APIConnectionError``), so one mapping serves both; each adapter says
how to open its stream, how to read it, and what its other errors mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from types import ModuleType
from typing import Any, ClassVar, Protocol

from roomcast.agents.providers.base import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    RetryPolicy,
    error_detail,
    parse_retry_after,
    retry_rate_limited,
    status_error,
)


class Assembler(Protocol):
    """Turns the SDK's stream items into provider events (no I/O)."""

    def feed(self, item: Any) -> list[ProviderEvent]: ...

    def finish(self) -> list[ProviderEvent]:
        """The last events; raises ValueError if the stream ended before the answer did."""
        ...


class SDKProvider(ABC):
    """A model behind a vendor SDK; a subclass names the SDK and its default endpoint.

    The SDK's own retries are off: :class:`RetryPolicy` decides, so that only a 429 before
    the first token is tried again.
    """

    sdk: ClassVar[ModuleType]
    vendor: ClassVar[str]  # where requests go without a base_url, for error messages

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        key_env: str | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._key_env = key_env
        self._client = self.make_client(api_key=api_key, base_url=base_url, timeout_s=timeout_s)
        self._where = f"model {model!r} at {base_url or self.vendor}"

    @abstractmethod
    def make_client(self, *, api_key: str, base_url: str | None, timeout_s: float) -> Any:
        """The SDK's async client, with its retries off."""

    @abstractmethod
    async def open_stream(self, request: ProviderRequest) -> Any:
        """Send the request; the SDK's stream of the answer."""

    @abstractmethod
    def assembler(self) -> Assembler:
        """A fresh reader for one stream."""

    def status(self, exc: Any) -> int:
        """The HTTP status that an ``APIStatusError`` stands for."""
        return int(exc.status_code)

    def other_error(self, exc: Exception) -> ProviderError | None:
        """What an error no other rule covers means; None lets it through as it is."""
        return None

    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        return retry_rate_limited(lambda: self._attempt(request), self._retry)

    async def aclose(self) -> None:
        await self._client.close()

    async def _attempt(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        stream: Any = None
        try:
            stream = await self.open_stream(request)
            assembler = self.assembler()
            async for item in stream:
                for event in assembler.feed(item):
                    yield event
            for event in assembler.finish():
                yield event
        except ProviderError:
            raise
        except Exception as exc:
            error = self._provider_error(exc, in_stream=stream is not None)
            if error is None:
                raise
            raise error from None
        finally:
            if stream is not None:
                await stream.close()

    def _provider_error(self, exc: Exception, *, in_stream: bool) -> ProviderError | None:
        """What ``exc`` means to the runtime; None lets it through as it is."""
        if isinstance(exc, self.sdk.APIStatusError):
            return status_error(
                self._where,
                self.status(exc),
                error_detail(exc.body) or exc.message,
                key_env=self._key_env,
                retry_after_s=parse_retry_after(exc.response.headers.get("retry-after")),
            )
        if isinstance(exc, self.sdk.APITimeoutError):
            return ProviderError(
                f"{self._where}: no answer within {self._timeout_s:g} s", retryable=True
            )
        if isinstance(exc, self.sdk.APIConnectionError):
            cause = exc.__cause__ or exc
            return ProviderError(f"{self._where}: connection failed: {cause}", retryable=True)
        if isinstance(exc, ValueError | TypeError | AttributeError | KeyError):
            # Before the stream opened, it is a bad call, not a bad answer.
            return ProviderError(f"{self._where}: malformed stream: {exc}") if in_stream else None
        return self.other_error(exc)
