"""The flights domain's tables, in FK (DAG) order."""

from __future__ import annotations

from data_factory.dbgen import CITIES, COUNTRIES, Rand, Table, table


def build(r: Rand) -> list[Table]:
    codes = "BOS ORD DEN SEA AUS PDX ATL MIA PHX DFW IAH DTW LHR CDG FRA NRT GRU DEL MAD FCO NBO OSL YYZ MEX".split()
    cities = CITIES[:12] + [
        "London",
        "Paris",
        "Frankfurt",
        "Tokyo",
        "Sao Paulo",
        "Delhi",
        "Madrid",
        "Rome",
        "Nairobi",
        "Oslo",
        "Toronto",
        "Mexico City",
    ]
    country = ["USA"] * 12 + [
        "UK",
        "France",
        "Germany",
        "Japan",
        "Brazil",
        "India",
        "Spain",
        "Italy",
        "Kenya",
        "Norway",
        "Canada",
        "Mexico",
    ]
    airport = [(c, f"{cities[i]} International", cities[i], country[i], r.randint(1, 6)) for i, c in enumerate(codes)]
    names = [
        "SkyWays",
        "Aerolink",
        "Polar Air",
        "Sunwing",
        "BlueJet",
        "Condor",
        "Pacifica",
        "Nordic Air",
        "Andes Express",
        "Savanna Air",
        "Atlas Lines",
        "Meridian",
    ]
    airline = [(i + 1, n, r.choice(COUNTRIES), r.randint(1950, 2015)) for i, n in enumerate(names)]
    flight = []
    for i in range(600):
        o, d = r.sample(codes, 2) if r.random() < 0.5 else (r.skewed(codes, 0.7), r.choice(codes))
        d = d if d != o else codes[(codes.index(o) + 5) % len(codes)]
        dist = r.randint(300, 12000)
        flight.append(
            (
                i + 1,
                r.skewed(list(range(1, 13)), 0.7),
                o,
                d,
                r.date(2023, 2024),
                dist,
                round(50 + dist * r.uniform(0.05, 0.15), 2),
            )
        )
    passenger = [(i + 1, r.person(), r.skewed(COUNTRIES, 0.9), r.normal_int(1982, 15, 1935, 2015)) for i in range(500)]
    classes = ["economy", "premium economy", "business", "first"]
    booking = []
    for i in range(2000):
        f = r.randint(1, 600)
        cls = r.skewed(classes, 1.3)
        booking.append(
            (
                i + 1,
                f,
                r.skewed(list(range(1, 501)), 0.4),
                cls,
                round(flight[f - 1][6] * (1, 1.6, 3.5, 6)[classes.index(cls)] * r.uniform(0.85, 1.2), 2),
            )
        )
    return [
        table("airport", "code T PK, name T, city T, country T, terminals I", airport),
        table("airline", "airline_id I PK, name T, country T, founded_year I", airline),
        table(
            "flight",
            "flight_id I PK, airline_id I, origin T, destination T, departure_date T, distance_km I, base_price R",
            flight,
            "airline_id->airline.airline_id, origin->airport.code, destination->airport.code",
        ),
        table("passenger", "passenger_id I PK, name T, nationality T, birth_year I", passenger),
        table(
            "booking",
            "booking_id I PK, flight_id I, passenger_id I, seat_class T, fare R",
            booking,
            "flight_id->flight.flight_id, passenger_id->passenger.passenger_id",
        ),
    ]
