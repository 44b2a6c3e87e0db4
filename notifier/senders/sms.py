"""SMS through Twilio's Messages API, with the twilio library's asyncio (aiohttp) client."""

from __future__ import annotations

import asyncio
import base64
import logging

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifier.senders.base import DeliveryError, quote_remote
from notifier.settings import NotifierSettings

# Where Twilio posts each message's status changes (notifier/providers_sms.py), under the
# notifier's public URL.
STATUS_CALLBACK_PATH = "/api/providers/twilio/status"

# Twilio error codes that mean "this number will never take this message".
PERMANENT_CODES = {
    21211: "invalid 'To' number",
    21408: "sending to this region is not enabled",
    21610: "recipient unsubscribed (replied STOP)",
    21614: "'To' number is not a mobile number",
}


class _AiohttpTransport(AsyncHttpClient):  # type: ignore[misc]
    """The twilio library's async HTTP contract on our own aiohttp session.

    The stock AsyncTwilioHttpClient uses aiohttp's deprecated `BasicAuth` and ignores its
    timeout; this one sends the Authorization header itself and bounds every request.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(logging.getLogger(__name__), True, timeout)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the library's signature; bounded in __init__
        allow_redirects: bool = False,
    ) -> Response:
        headers = dict(headers or {})
        if auth is not None:
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        async with self._session.request(
            method.upper(),
            uri,
            params={key: str(value) for key, value in (params or {}).items()},
            data=data,
            headers=headers,
            allow_redirects=allow_redirects,
        ) as response:
            return Response(response.status, await response.text(), response.headers)

    async def close(self) -> None:
        await self._session.close()


class SmsSender:
    """Sends SMS over one pooled HTTP session; call `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sender: str,
        base_url: str = "",
        timeout: float = 10.0,
        status_callback: str = "",
    ) -> None:
        """`status_callback`: the URL every message asks Twilio to report its status to."""
        self._sid = account_sid
        self._status_callback = status_callback
        self._token = auth_token
        self._from = sender
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._client: Client | None = None
        self._http: _AiohttpTransport | None = None

    @classmethod
    def from_settings(cls, s: NotifierSettings) -> SmsSender | None:
        token = s.twilio_auth_token.get_secret_value() if s.twilio_auth_token else ""
        if not (s.twilio_account_sid and token and s.twilio_from):
            return None
        return cls(
            account_sid=s.twilio_account_sid,
            auth_token=token,
            sender=s.twilio_from,
            base_url=s.twilio_base_url,
            timeout=s.sms_timeout,
            status_callback=s.notifier_public_url + STATUS_CALLBACK_PATH
            if s.notifier_public_url
            else "",
        )

    async def send(self, to: str, text: str) -> str:
        """Hand one SMS to Twilio; returns the message sid."""
        messages = self._twilio().api.v2010.account.messages
        extra = {"status_callback": self._status_callback} if self._status_callback else {}
        try:
            async with asyncio.timeout(self._timeout):
                message = await messages.create_async(to=to, from_=self._from, body=text, **extra)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._refused(exc) from None
        except TimeoutError:
            raise DeliveryError("Twilio timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return str(message.sid)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._client = None

    def _twilio(self) -> Client:
        # Built on first use: aiohttp wants its session created inside the running loop.
        if self._client is None:
            self._http = _AiohttpTransport(self._timeout)
            client = Client(self._sid, self._token, http_client=self._http)
            if self._base_url:
                client.api.base_url = self._base_url
                # TWILIO_REGION/TWILIO_EDGE in the environment would rewrite the local host.
                client.region = client.edge = None
            self._client = client
        return self._client

    def _refused(self, exc: TwilioRestException | TwilioServiceException) -> DeliveryError:
        status = int(exc.status)
        # Without a code in the body the library substitutes the HTTP status: not a Twilio code.
        code = exc.code if isinstance(exc.code, int) and exc.code != status else None
        text = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
        # The library prefixes its own "Unable to create record: "; keep the server's part.
        text = quote_remote(str(text).rpartition("Unable to create record: ")[2], (self._token,))
        known = PERMANENT_CODES.get(code) if code is not None else None
        reason = f"Twilio {status}" + (f" code {code}" if code is not None else "")
        reason += f": {known or text}" if known or text else ""
        transient = status == 429 or status >= 500
        return DeliveryError(reason, permanent=known is not None or not transient)
