"""The six embedded domains, one module each. Each `build(r)` returns its tables in FK (DAG) order; children draw
foreign keys from their parents' keys with skewed weights so group sizes differ."""

from data_factory.domains import flights, hospital, library, retail, sports, university

BUILDERS = {
    "university": university.build,
    "retail": retail.build,
    "flights": flights.build,
    "hospital": hospital.build,
    "library": library.build,
    "sports": sports.build,
}
