"""The university domain's tables, in FK (DAG) order."""

from __future__ import annotations

from data_factory.dbgen import Rand, Table, table


def build(r: Rand) -> list[Table]:
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
