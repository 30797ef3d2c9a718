"""The library domain's tables, in FK (DAG) order."""

from __future__ import annotations

import datetime

from data_factory.dbgen import CITIES, COUNTRIES, Rand, Table, table


def build(r: Rand) -> list[Table]:
    author = [(i + 1, r.person(), r.skewed(COUNTRIES, 0.7), r.normal_int(1955, 20, 1900, 2000)) for i in range(120)]
    genres = ["fiction", "mystery", "science", "history", "fantasy", "biography", "poetry", "romance"]
    book = [
        (
            i + 1,
            r.title(),
            r.skewed(list(range(1, 121)), 0.6),
            r.skewed(genres, 0.6),
            r.randint(1950, 2024),
            r.normal_int(320, 110, 60, 1200),
        )
        for i in range(500)
    ]
    member = [(i + 1, r.person(), r.skewed(CITIES, 0.9), r.randint(2010, 2024)) for i in range(300)]
    loan = []
    for i in range(2000):
        d = r.date(2021, 2024)
        ret = (
            None
            if r.random() < 0.12
            else (datetime.date.fromisoformat(d) + datetime.timedelta(days=r.randint(3, 60))).isoformat()
        )
        loan.append(
            (
                i + 1,
                r.skewed(list(range(1, 501)), 0.7),
                r.skewed(list(range(1, 301)), 0.5),
                d,
                ret,
                round(max(0.0, r.gauss(1.0, 2.5)), 2),
            )
        )
    return [
        table("author", "author_id I PK, name T, country T, birth_year I", author),
        table(
            "book",
            "book_id I PK, title T, author_id I, genre T, publish_year I, pages I",
            book,
            "author_id->author.author_id",
        ),
        table("member", "member_id I PK, name T, city T, join_year I", member),
        table(
            "loan",
            "loan_id I PK, book_id I, member_id I, loan_date T, return_date T, late_fee R",
            loan,
            "book_id->book.book_id, member_id->member.member_id",
        ),
    ]
