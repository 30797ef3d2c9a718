"""Building blocks for the embedded domain generators: name vocabularies, a seeded value generator, Table."""

from __future__ import annotations

import dataclasses
import datetime
import random

FIRST = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph "
    "Jessica "
    "Thomas Sarah Charles Karen Daniel Lisa Matthew Nancy Anthony Betty Mark Sandra Donald Ashley Steven Emily Paul "
    "Kimberly Andrew Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah Timothy Stephanie "
    "Wei Aiko Carlos Fatima Ivan Priya Omar Sofia Lars Chen Yuki Mateo Amara Nikolai Leila Diego Ingrid Ravi Elena"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson "
    "Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell "
    "Mitchell Carter Roberts Tanaka Kowalski Muller Rossi Novak Silva Kim Patel Okafor Larsen Ivanova Haddad Costa"
).split()
CITIES = (
    "Boston Chicago Denver Seattle Austin Portland Atlanta Miami Phoenix Dallas Houston Detroit Madison Tucson "
    "Raleigh Omaha Fresno Tampa Spokane Albany"
).split()
COUNTRIES = "USA Canada Mexico France Germany Japan Brazil India Spain Italy Kenya Norway".split()
ADJ = "Silent Golden Hidden Broken Crimson Distant Frozen Burning Quiet Endless Lost Wild Bright Hollow Iron".split()
NOUN = (
    "River Garden Empire Shadow Mountain Ocean Forest Kingdom Journey Winter Harbor Voice Mirror Storm Bridge".split()
)


@dataclasses.dataclass
class Table:
    name: str
    columns: list[tuple[str, str]]  # (name, SQL type + constraints)
    rows: list[tuple]
    foreign_keys: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (column, ref_table, ref_col)
    primary_key: tuple[str, ...] = ()  # composite keys only; single keys are declared inline


_TYPES = {"I": "INTEGER", "T": "TEXT", "R": "REAL", "PK": "PRIMARY KEY"}


def table(name: str, cols: str, rows: list[tuple], fks: str = "", pk: str = "") -> Table:
    """cols: "a I PK, b T, c R" (INTEGER/TEXT/REAL, PRIMARY KEY); fks: "b->other.id, ..."; pk: composite "a, b"."""
    columns = [(c.split()[0], " ".join(_TYPES[w] for w in c.split()[1:])) for c in cols.split(",")]
    fk_list = []
    for fk in filter(None, (f.strip() for f in fks.split(","))):
        col, ref = fk.split("->")
        fk_list.append((col, *ref.split(".")))
    return Table(name, columns, rows, fk_list, tuple(c.strip() for c in pk.split(",") if c.strip()))


class Rand(random.Random):
    """random.Random plus the few value generators the domains share."""

    def person(self) -> str:
        return f"{self.choice(FIRST)} {self.choice(LAST)}"

    def skewed(self, seq, s: float = 0.9):
        # Zipf-like over a fixed order: early items are frequent, late ones rare (never constant).
        w = [1.0 / (i + 1) ** s for i in range(len(seq))]
        return self.choices(seq, weights=w)[0]

    def normal_int(self, mu, sd, lo, hi) -> int:
        return int(min(hi, max(lo, round(self.gauss(mu, sd)))))

    def money(self, median, sigma=0.5, digits=2) -> float:
        return round(median * self.lognormvariate(0, sigma), digits)

    def date(self, y0: int, y1: int) -> str:
        start = datetime.date(y0, 1, 1).toordinal()
        return datetime.date.fromordinal(self.randint(start, datetime.date(y1, 12, 31).toordinal())).isoformat()

    def title(self) -> str:
        return (
            f"The {self.choice(ADJ)} {self.choice(NOUN)}"
            if self.random() < 0.6
            else f"{self.choice(NOUN)} of {self.choice(ADJ)} {self.choice(NOUN)}s"
        )
