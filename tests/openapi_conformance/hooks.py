"""Schemathesis hooks of tests/openapi_conformance.rs.

Why: an export cursor is valid only when this server signed it (HMAC with a key the
document cannot state), so a cursor drawn from its schema is refused, rightly, with a 400.
A request the generator means as valid (positive) therefore carries a cursor the server
issued: one the test fetched before the run (ORDER_CDC_CURSORS) or one a response of this
run returned as next_cursor. Negative requests keep their drawn cursors, which the server
must refuse.

Likewise the document states in words what JSON Schema cannot compare across parameters:
a range's lower bound must not be above its upper one (a 422 or 400 naming it). A
positive request gets its bounds in order; negative ones keep theirs.
"""

import json
import os
import random
from datetime import datetime, timezone
from decimal import Decimal

import schemathesis

ISSUED = set(os.environ.get("ORDER_CDC_CURSORS", "").split())


def instant(text):
    at = datetime.fromisoformat(text.replace(" ", "T", 1))
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


# (lower, upper, how values compare) of every range the server checks.
RANGES = [
    ("min_total", "max_total", Decimal),
    ("date_from", "date_to", instant),
    ("placed_from", "placed_to", instant),
    ("startDate", "endDate", int),
]


def order_ranges(query):
    for low, high, key in RANGES:
        if low in query and high in query:
            try:
                inverted = key(str(query[low])) > key(str(query[high]))
            except (ValueError, ArithmeticError, OverflowError):
                continue
            if inverted:
                query[low], query[high] = query[high], query[low]


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query or {}
    cursor = query.get("cursor")
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive:
        return
    if isinstance(cursor, str) and cursor not in ISSUED and ISSUED:
        query["cursor"] = random.choice(sorted(ISSUED))
    order_ranges(query)


@schemathesis.hook
def after_call(ctx, case, response):
    try:
        cursor = json.loads(response.content).get("next_cursor")
    except (ValueError, AttributeError):
        return
    if isinstance(cursor, str):
        ISSUED.add(cursor)
