"""The six embedded domains. Each returns its tables in FK (DAG) order; children draw foreign keys from their
parents' keys with skewed weights so group sizes differ."""

from __future__ import annotations

import datetime

from data_factory.dbgen import ADJ, CITIES, COUNTRIES, Rand, Table, table


def _university(r: Rand) -> list[Table]:
    depts = ["Computer Science", "Mathematics", "Physics", "Biology", "History", "Economics", "Music", "Chemistry"]
    buildings = ["Watson", "Taylor", "Packard", "Painter", "Gates", "Main"]
    department = [(i + 1, d, r.choice(buildings), r.money(400000, 0.4, 0)) for i, d in enumerate(depts)]
    d_ids = [d[0] for d in department]
    instructor = [
        (i + 1, r.person(), r.skewed(d_ids, 0.5), r.money(85000, 0.25, 0), r.randint(1988, 2024)) for i in range(60)
    ]
    student = [
        (
            i + 1,
            r.person(),
            r.skewed(d_ids, 0.7),
            r.randint(2016, 2024),
            round(min(4.0, max(1.0, r.gauss(3.1, 0.5))), 2),
        )
        for i in range(400)
    ]
    topics = ["Intro to", "Advanced", "Topics in", "Seminar on", "Applied"]
    course = [
        (i + 1, f"{r.choice(topics)} {r.choice(depts)}", r.skewed(d_ids, 0.4), r.choice([1, 2, 3, 3, 4, 4, 5]))
        for i in range(45)
    ]
    pairs = sorted({(r.randint(1, 400), r.skewed(list(range(1, 46)), 0.7)) for _ in range(1700)})
    grades = ["A", "A-", "B+", "B", "B-", "C+", "C", "D", "F"]
    enrollment = [
        (s, c, r.choice(["Fall", "Spring", "Summer"]) + f" {r.randint(2019, 2024)}", r.skewed(grades, 0.6))
        for s, c in pairs
    ]
    return [
        table("department", "dept_id I PK, name T, building T, budget R", department),
        table(
            "instructor",
            "instructor_id I PK, name T, dept_id I, salary R, hire_year I",
            instructor,
            "dept_id->department.dept_id",
        ),
        table(
            "student",
            "student_id I PK, name T, dept_id I, enroll_year I, gpa R",
            student,
            "dept_id->department.dept_id",
        ),
        table("course", "course_id I PK, title T, dept_id I, credits I", course, "dept_id->department.dept_id"),
        table(
            "enrollment",
            "student_id I, course_id I, semester T, grade T",
            enrollment,
            "student_id->student.student_id, course_id->course.course_id",
            pk="student_id, course_id",
        ),
    ]


def _retail(r: Rand) -> list[Table]:
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


def _flights(r: Rand) -> list[Table]:
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


def _hospital(r: Rand) -> list[Table]:
    depts = [
        "Cardiology",
        "Neurology",
        "Oncology",
        "Pediatrics",
        "Orthopedics",
        "Dermatology",
        "Radiology",
        "Emergency",
    ]
    department = [(i + 1, d, r.randint(1, 9)) for i, d in enumerate(depts)]
    specialties = ["surgeon", "consultant", "resident", "specialist", "attending"]
    doctor = [
        (i + 1, "Dr. " + r.person(), r.skewed(list(range(1, 9)), 0.5), r.skewed(specialties, 0.7), r.randint(1, 35))
        for i in range(50)
    ]
    patient = [
        (i + 1, r.person(), r.normal_int(1970, 20, 1925, 2022), r.choice(["F", "M"]), r.skewed(CITIES, 0.8))
        for i in range(500)
    ]
    statuses = ["completed", "scheduled", "cancelled", "no-show"]
    appointment = [
        (
            i + 1,
            r.skewed(list(range(1, 501)), 0.5),
            r.skewed(list(range(1, 51)), 0.6),
            r.date(2022, 2024),
            r.money(150, 0.6),
            r.skewed(statuses, 1.1),
        )
        for i in range(1500)
    ]
    drugs = [
        "Amoxicillin",
        "Ibuprofen",
        "Lisinopril",
        "Metformin",
        "Atorvastatin",
        "Omeprazole",
        "Albuterol",
        "Warfarin",
        "Prednisone",
        "Sertraline",
    ]
    prescription = [
        (
            i + 1,
            r.randint(1, 1500),
            r.skewed(drugs, 0.8),
            r.choice([5, 10, 20, 25, 50, 100, 250, 500]),
            r.choice([3, 5, 7, 10, 14, 30, 90]),
        )
        for i in range(1200)
    ]
    return [
        table("department", "dept_id I PK, name T, floor I", department),
        table(
            "doctor",
            "doctor_id I PK, name T, dept_id I, role T, years_experience I",
            doctor,
            "dept_id->department.dept_id",
        ),
        table("patient", "patient_id I PK, name T, birth_year I, gender T, city T", patient),
        table(
            "appointment",
            "appointment_id I PK, patient_id I, doctor_id I, appt_date T, fee R, status T",
            appointment,
            "patient_id->patient.patient_id, doctor_id->doctor.doctor_id",
        ),
        table(
            "prescription",
            "prescription_id I PK, appointment_id I, drug T, dosage_mg I, days I",
            prescription,
            "appointment_id->appointment.appointment_id",
        ),
    ]


def _library(r: Rand) -> list[Table]:
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


def _sports(r: Rand) -> list[Table]:
    mascots = "Hawks Bears Wolves Sharks Comets Titans Falcons Lions Pirates Rangers Storm Vipers Owls Knights Bulls"
    mascots = (mascots + " Jets").split()
    team = [
        (i + 1, f"{CITIES[i]} {m}", CITIES[i], r.randint(1900, 2010), r.choice(["East", "West"]))
        for i, m in enumerate(mascots)
    ]
    positions = ["guard", "forward", "center", "point guard", "small forward"]
    player = [
        (
            i + 1,
            r.person(),
            r.randint(1, 16),
            r.skewed(positions, 0.5),
            r.normal_int(1996, 4, 1984, 2005),
            r.money(2500000, 0.9, 0),
        )
        for i in range(320)
    ]
    game = []
    for i in range(240):
        h, a = r.sample(range(1, 17), 2)
        game.append(
            (
                i + 1,
                h,
                a,
                r.date(2023, 2024),
                r.normal_int(108, 12, 70, 150),
                r.normal_int(104, 12, 70, 150),
                r.normal_int(17000, 3000, 8000, 22000),
            )
        )
    roster: dict[int, list[int]] = {}
    for p in player:
        roster.setdefault(p[2], []).append(p[0])
    player_stat = []
    for g in game:
        for t in (g[1], g[2]):
            for p in r.sample(roster.get(t, []), min(r.randint(3, 7), len(roster.get(t, [])))):
                player_stat.append(
                    (g[0], p, r.normal_int(12, 8, 0, 55), r.normal_int(3, 3, 0, 18), r.normal_int(24, 9, 1, 48))
                )
    return [
        table("team", "team_id I PK, name T, city T, founded_year I, conference T", team),
        table(
            "player",
            "player_id I PK, name T, team_id I, position T, birth_year I, salary R",
            player,
            "team_id->team.team_id",
        ),
        table(
            "game",
            "game_id I PK, home_team_id I, away_team_id I, game_date T, home_score I, away_score I, attendance I",
            game,
            "home_team_id->team.team_id, away_team_id->team.team_id",
        ),
        table(
            "player_stat",
            "game_id I, player_id I, points I, assists I, minutes I",
            player_stat,
            "game_id->game.game_id, player_id->player.player_id",
            pk="game_id, player_id",
        ),
    ]


BUILDERS = {
    "university": _university,
    "retail": _retail,
    "flights": _flights,
    "hospital": _hospital,
    "library": _library,
    "sports": _sports,
}
