"""The retail domain's tables, in FK (DAG) order."""

from __future__ import annotations

from data_factory.dbgen import ADJ, CITIES, Rand, Table, table


def build(r: Rand) -> list[Table]:
    segments = ["consumer", "corporate", "home office", "small business"]
    customer = [(i + 1, r.person(), r.skewed(CITIES), r.date(2015, 2024), r.skewed(segments, 0.8)) for i in range(300)]
    cats = ["electronics", "books", "toys", "garden", "kitchen", "sports", "beauty", "office"]
    items = (
        "Lamp Kettle Blender Drone Puzzle Novel Racket Hose Mixer Speaker Notebook Chair Shampoo Camera Skillet".split()
    )
    product = [
        (i + 1, f"{r.choice(ADJ)} {r.choice(items)}", r.skewed(cats, 0.6), r.money(35, 0.8), r.randint(0, 500))
        for i in range(90)
    ]
    store = [
        (i + 1, f"{c} {r.choice(['Central', 'Mall', 'Outlet', 'Plaza'])}", c, r.randint(1995, 2022))
        for i, c in enumerate(CITIES[:12])
    ]
    statuses = ["delivered", "shipped", "processing", "cancelled", "returned"]
    orders = [
        (
            i + 1,
            r.skewed(list(range(1, 301)), 0.6),
            r.skewed(list(range(1, 13)), 0.8),
            r.date(2020, 2024),
            r.skewed(statuses, 1.2),
        )
        for i in range(1200)
    ]
    price = {p[0]: p[3] for p in product}
    pairs = sorted({(r.randint(1, 1200), r.skewed(list(range(1, 91)), 0.7)) for _ in range(3000)})
    order_item = [
        (o, p, r.skewed([1, 2, 3, 4, 5, 6, 8, 10], 1.0), round(price[p] * r.uniform(0.8, 1.0), 2)) for o, p in pairs
    ]
    return [
        table("customer", "customer_id I PK, name T, city T, signup_date T, segment T", customer),
        table("product", "product_id I PK, name T, category T, price R, stock I", product),
        table("store", "store_id I PK, name T, city T, opened_year I", store),
        table(
            "orders",
            "order_id I PK, customer_id I, store_id I, order_date T, status T",
            orders,
            "customer_id->customer.customer_id, store_id->store.store_id",
        ),
        table(
            "order_item",
            "order_id I, product_id I, quantity I, unit_price R",
            order_item,
            "order_id->orders.order_id, product_id->product.product_id",
            pk="order_id, product_id",
        ),
    ]
