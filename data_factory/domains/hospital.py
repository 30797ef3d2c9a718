"""The hospital domain's tables, in FK (DAG) order."""

from __future__ import annotations

from data_factory.dbgen import CITIES, Rand, Table, table


def build(r: Rand) -> list[Table]:
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
