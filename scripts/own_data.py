"""Write a small corpus of "your own data" (beekeeping) to try loralab on a domain it does not ship.

    python scripts/own_data.py beekeeping/        # then follow "Your own data" in the README

It holds what a real folder of notes holds, mistakes included:
  notes/*.md          markdown notes with headings, lists and tips (raw text for `data structure`)
  faq.csv             question,answer pairs (one row has an empty answer)
  alpaca.jsonl        instruction/input/output records, three lines broken (bad JSON, a wrong
                      field, an empty output)
  winter_log.txt      a Windows file: UTF-8 BOM and CRLF line ends (repaired on ingest)
  hive_photo.txt      binary data behind a .txt name (quarantined on ingest)
Everything is written from the tables below: the same files on every run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# (topic, [facts]) -> one markdown note per topic
NOTES = {
    "varroa": [
        "Varroa destructor is a parasitic mite that feeds on the fat body of developing and adult bees.",
        "A sugar roll of 300 bees gives a mite count; more than 9 mites means treatment is due.",
        "Oxalic acid works best in December, when the colony has no capped brood to shelter mites.",
        "Drone brood removal in May and June lowers the mite load without chemicals.",
    ],
    "swarming": [
        "A colony swarms when it raises new queens and the old queen leaves with half of the workers.",
        "Queen cells along the lower edge of the frames are the first sign of swarming in spring.",
        "An artificial swarm splits the colony before it leaves: the queen goes to a new box on the old stand.",
        "Swarms usually settle within 50 metres of the hive before scouts choose a new home.",
    ],
    "winter": [
        "A colony needs about 18 kilograms of stores to survive a winter in Northern Europe.",
        "Bees form a winter cluster below 14 degrees Celsius and shiver their flight muscles for heat.",
        "A mouse guard on the entrance keeps mice out of the hive from October to March.",
        "Condensation, not cold, kills most colonies in winter; the roof needs a little ventilation.",
    ],
    "honey": [
        "Honey is ready to harvest when at least 80 percent of the cells are capped with wax.",
        "Ripe honey holds less than 18 percent water and does not ferment in the jar.",
        "Oilseed rape honey crystallises within two weeks and must be extracted quickly.",
        "A Langstroth super full of honey weighs about 25 kilograms.",
    ],
    "queens": [
        "A queen lays up to 2000 eggs a day at the peak of the season in June.",
        "The queen mates on one to three flights in her first week and stores sperm for life.",
        "Marking the queen with a dot of paint makes her easy to find; the colour gives the year.",
        "A colony without a queen becomes loud and restless within an hour of losing her.",
    ],
    "equipment": [
        "The Langstroth hive, patented in 1852, uses a bee space of 9 millimetres between frames.",
        "A smoker calms the bees by masking their alarm pheromone.",
        "A queen excluder keeps the queen in the brood box so the supers hold only honey.",
        "Foundation sheets of beeswax guide the bees to build straight comb in the frames.",
    ],
    "forage": [
        "Bees fly up to 3 kilometres from the hive to forage, and further when forage is scarce.",
        "Willow and hazel give the first pollen of the year in February and March.",
        "Lime trees yield a strong nectar flow in July on warm, humid days.",
        "The waggle dance tells other foragers the direction and distance of a good patch of flowers.",
    ],
    "diseases": [
        "American foulbrood is a notifiable disease; the ropey larvae test identifies it in the field.",
        "Nosema spores spread in the gut of adult bees and show as dysentery on the frames.",
        "Chalkbrood turns larvae into hard white mummies and is worst in damp, cool springs.",
        "Deformed wing virus is carried by varroa mites and cripples the bees that emerge.",
    ],
}

FAQ = [
    ("How many stores does a colony need for winter?", "About 18 kilograms of honey or syrup."),
    ("When is oxalic acid treatment most effective?", "In December, when there is no capped brood."),
    ("What does a sugar roll measure?", "The number of varroa mites on 300 bees."),
    ("How far do bees forage?", "Up to 3 kilometres from the hive."),
    ("What is the bee space in a Langstroth hive?", "9 millimetres between frames."),
    ("When is honey ready to harvest?", "When at least 80 percent of the cells are capped."),
    ("How many eggs can a queen lay per day?", "Up to 2000 at the peak of the season."),
    ("What does a queen excluder do?", "It keeps the queen in the brood box."),
    ("Which disease is notifiable?", "American foulbrood."),
    ("What gives the first pollen of the year?", "Willow and hazel in February and March."),
    ("Why does a smoker calm bees?", "It masks their alarm pheromone."),
    ("What kills most colonies in winter?", "Condensation inside the hive."),
    ("How heavy is a full Langstroth super?", "About 25 kilograms."),
    ("When do bees form a winter cluster?", "Below 14 degrees Celsius."),
    ("Which honey crystallises within two weeks?", "Oilseed rape honey."),
    ("What carries deformed wing virus?", "Varroa mites."),
    ("Where are swarm cells usually found?", "Along the lower edge of the frames."),
    ("How much water does ripe honey hold?", ""),  # an empty answer: quarantined
]

ALPACA = [
    ("Explain what an artificial swarm is.", "",
     "An artificial swarm splits a colony before it swarms: the queen is moved to a new box on the old "
     "stand and the flying bees join her, while the old box raises a new queen."),
    ("Give one sign that a colony has lost its queen.", "",
     "The colony becomes loud and restless within an hour."),
    ("Name a chemical-free way to reduce varroa.", "", "Remove drone brood in May and June."),
    ("What does the colour of a queen's mark tell you?", "", "The year she was born."),
    ("Summarise how bees keep warm in winter.", "",
     "They form a cluster and shiver their flight muscles to produce heat."),
    ("Translate the beekeeping term into plain English.", "super",
     "A box placed above the brood box where the bees store honey."),
    ("What does the waggle dance communicate?", "",
     "The direction and distance of a good patch of flowers."),
    ("When does lime give a nectar flow?", "", "In July, on warm and humid days."),
    ("Describe chalkbrood.", "", "A fungal disease that turns larvae into hard white mummies."),
    ("Why use foundation sheets?", "", "They guide the bees to build straight comb."),
    ("What should you fit on the entrance in October?", "", "A mouse guard."),
    ("How does the queen mate?", "", "On one to three flights in her first week; she stores the sperm for life."),
]

WINTER_LOG = [
    "Winter log, apiary by the river",
    "",
    "2 November: all six colonies heavy; fed the weakest 4 litres of syrup.",
    "10 December: oxalic acid trickled on broodless colonies; 180 mites dropped in hive 3.",
    "15 January: dead colony in hive 5, wet combs, too little ventilation under the roof.",
    "20 February: first willow pollen carried in on a warm afternoon.",
]


def note_text(topic: str, facts: list[str]) -> str:
    """A markdown note: heading, an opening paragraph, a list and a tip section."""
    title = topic.capitalize()
    lines = [f"# {title}", "", facts[0] + " " + facts[1], "", "## Key points", ""]
    lines += [f"- {f}" for f in facts[1:]]
    lines += ["", "## Practical tip", "", facts[-1], ""]
    return "\n".join(lines)


def write_corpus(out: Path) -> dict[str, int]:
    """Write every file under `out`; returns {file: items} (what ingest should read)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes").mkdir(exist_ok=True)
    counts = {}
    for topic, facts in NOTES.items():
        (out / "notes" / f"{topic}.md").write_text(note_text(topic, facts), encoding="utf-8")
        counts[f"notes/{topic}.md"] = 1
    with open(out / "faq.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerows(FAQ)
    counts["faq.csv"] = len(FAQ)
    lines = [json.dumps({"instruction": i, "input": x, "output": o}) for i, x, o in ALPACA]
    lines.insert(3, '{"instruction": "How many frames fit a brood box?", "output": "Ten"')  # truncated JSON
    lines.insert(7, json.dumps({"instruction": "Name a hive type.", "outptu": "Langstroth"}))  # misspelt field
    lines.insert(11, json.dumps({"instruction": "What is propolis?", "input": "", "output": ""}))  # empty output
    (out / "alpaca.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts["alpaca.jsonl"] = len(lines)
    (out / "winter_log.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(WINTER_LOG).encode("utf-8") + b"\r\n")
    counts["winter_log.txt"] = 1
    (out / "hive_photo.txt").write_bytes(bytes(range(256)) * 8)  # a JPEG someone renamed, say
    counts["hive_photo.txt"] = 1
    return counts


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "beekeeping")
    counts = write_corpus(out)
    print(f"wrote {sum(counts.values())} items in {len(counts)} files under {out}/")


if __name__ == "__main__":
    main()
