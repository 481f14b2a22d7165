"""A customer's data: exported as one JSON document, or erased.

For the requests a data-protection law lets a person make of the deployment
(a copy of what is kept about them; its erasure), made by the CRM on the
customer's behalf. What belongs to a customer and what erasure removes are
storage's rules (ChatStore.customer_export, ChatStore.erase_customer); these
routes stream and render them.

The export is streamed, a chunk at a time as storage reads it: a customer with
years of messages is never one document in memory. Its picture and video URLs
are signed for a day (storage's EXPORT_LINK_SECONDS), not for the chat's week:
an export is a file that gets passed around. ``leida-chat export-customer``
writes the same document with the same links.
"""
from __future__ import annotations

from tornado.iostream import StreamClosedError

from handlers.items import signed_links
from storage.customer_data import EXPORT_LINK_SECONDS

from .base import ServerApiHandler, parse_id
from .problems import Problem


async def erase_customer(handler: ServerApiHandler, customer_id: int) -> None:
    """DELETE /api/v1/customers/{id}: the customer and what is theirs removed; how much of each.

    Erasing twice answers 200 with zeros: the CRM may retry an erasure whose answer it lost.
    """
    delete_files = handler.media.delete if handler.media is not None else _no_files
    removed = await handler.store.erase_customer(customer_id, delete_files)
    handler.audit_counts.update({f"removed_{name}": count for name, count in removed.items()})
    handler.answer({"customer_id": customer_id, "removed": removed})


async def _no_files(keys: list[str]) -> None:
    """Without a media room there are no files to delete (the records still go)."""


class ExportHandler(ServerApiHandler):
    """GET /api/v1/customers/{id}/export: the customer's data as one JSON document, streamed."""

    @property
    def operation(self) -> str:
        return "customer.export"

    async def get(self, raw_id: str) -> None:
        customer_id = parse_id(raw_id)
        self.audit_ids["customer_id"] = customer_id
        export = await self.store.customer_export(customer_id)
        if export is None:
            raise Problem(404, f"no customer with id {customer_id}")
        # media.base_url's public address, else paths: this listener's own address is private
        links = signed_links(self.media, None, EXPORT_LINK_SECONDS)
        self.set_header("Content-Disposition", f'attachment; filename="customer-{customer_id}.json"')
        written = 0
        chunks = export.json_chunks(links)
        try:
            async for chunk in chunks:
                self.write(chunk)
                written += len(chunk)
                await self.flush()
        except StreamClosedError:  # the caller hung up: stop reading
            self.audit_counts["interrupted"] = 1
            return
        finally:
            self.audit_counts["chars"] = written
            aclose = getattr(chunks, "aclose", None)  # the generator's reads end now, not when collected
            if aclose is not None:
                await aclose()
        self.finish()
