"""The sports domain's tables, in FK (DAG) order."""

from __future__ import annotations

from data_factory.dbgen import CITIES, Rand, Table, table


def build(r: Rand) -> list[Table]:
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
