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

And for POST /sales-orders: product_id, company_id and customer_id must name rows of this
database, and two rules span fields (the items' total plus tax and shipping below 10^12,
discount_total at most the items' total). A positive body gets ids that exist
(ORDER_CDC_PRODUCTS, ORDER_CDC_COMPANIES, ORDER_CDC_CUSTOMERS: space-separated ids), its
totals within those rules and an order number not used before (409 otherwise).
"""

import itertools
import json
import os
import random
from datetime import datetime, timezone
from decimal import Decimal

import schemathesis

ISSUED = set(os.environ.get("ORDER_CDC_CURSORS", "").split())
PRODUCTS = [int(i) for i in os.environ.get("ORDER_CDC_PRODUCTS", "").split()]
COMPANIES = [int(i) for i in os.environ.get("ORDER_CDC_COMPANIES", "").split()]
CUSTOMERS = [int(i) for i in os.environ.get("ORDER_CDC_CUSTOMERS", "").split()]
LIMIT = Decimal(10) ** 12
USED = set()
SERIAL = itertools.count(1)


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


def amount(value):
    return Decimal(str(value)) if is_number(value) else Decimal(0)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_valid(order):
    items = [i for i in order.get("items") or [] if isinstance(i, dict)]
    for item in items:
        if PRODUCTS:
            item["product_id"] = random.choice(PRODUCTS)
    if is_number(order.get("customer_id")) and CUSTOMERS:
        order["customer_id"] = random.choice(CUSTOMERS)
    if is_number(order.get("company_id")):
        if COMPANIES:
            order["company_id"] = random.choice(COMPANIES)
        else:
            del order["company_id"]
            for key in ("bill_to", "ship_to"):
                if not isinstance(order.get(key), dict):
                    order[key] = {}
    products = sum((amount(i.get("quantity")) * amount(i.get("unit_price")) for i in items), Decimal(0))
    if products + amount(order.get("total_tax")) + amount(order.get("total_shipping")) >= LIMIT:
        for item in items:
            item["unit_price"] = 0
        products = Decimal(0)
        if amount(order.get("total_tax")) + amount(order.get("total_shipping")) >= LIMIT:
            order["total_shipping"] = 0
    if amount(order.get("discount_total")) > products:
        order["discount_total"] = float(products)
    number = order.get("order_number")
    if isinstance(number, str):
        if number in USED:
            number = f"{number[:200]}-{next(SERIAL)}"
            order["order_number"] = number
        USED.add(number)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query or {}
    cursor = query.get("cursor")
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive:
        return
    if case.method == "POST" and case.path == "/sales-orders" and isinstance(case.body, dict):
        make_valid(case.body)
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
