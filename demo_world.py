"""A fictional world for the offline demo: its encyclopedia (pretraining corpus) and its SQuAD-style questions.

One seeded generator builds a world of regions, rivers, seas, towns, institutions and people (with birth and death
years, birthplaces, occupations, works, teachers, siblings, spouses), then renders it as encyclopedia articles.
Every fact is written with one of several paraphrases, and most facts appear in more than one article (a person's
birthplace in their own article and in the town's list of natives, a teacher in the pupil's article and in the
teacher's), so a model that fills in blanks well has to learn the facts, not the sentence templates.

    generate_documents(seed=0, num_documents=None) -> list[str]        # the corpus of prepare_data.py --dataset demo
    generate_squad(seed=0, num_articles=None, questions_per_article=4, split="train") -> dict   # SQuAD v1.1 layout

The QA set asks about the same world; its contexts are the same articles rendered with other paraphrases, and the
"train" and "validation" splits cover disjoint entities, so fine-tuning is scored on held-out articles. Everything
is drawn from `random.Random` instances seeded with strings (deterministic across runs and processes, whatever
PYTHONHASHSEED is); the global RNG is never touched.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache

NUM_REGIONS, NUM_SEAS, NUM_RIVERS, NUM_PLACES, NUM_FAMILIES, NUM_INSTITUTIONS = 12, 5, 60, 640, 8600, 240
FIRST_YEAR, LAST_YEAR = 1560, 1900  # birth years of the people
FIRST_NAMES_PER_GENDER = 500
_SLOT = re.compile(r"\{(\w+)\}")  # a {slot} in a sentence, question or title template

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------

ONSETS = "b br c d dr f g gr h k l m n p r s st t th v w z sh".split()
VOWELS = "a e i o u a e o ae ei ou ia".split()
CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "d", "rn", "nd", "x"]
ENDINGS = {
    "female": ["a", "ia", "elle", "ine", "wen", "ara", "ith", "ey"],
    "male": ["or", "an", "ric", "as", "en", "ald", "ius", "o"],
    "family": ["er", "ing", "son", "ow", "ett", "ard", "ley", "mont", ""],
    "place": ["ford", "holm", "mere", "by", "stead", "wick", "haven", "gard", "ton", "bury", "dale"],
    "river": ["a", "en", "is", "e", "os", "ar"],
    "region": ["ia", "land", "mark", "or", "ovia", "arra"],
    "sea": ["ic", "ian", "ene", "oth"],
}
PLACE_KINDS = {"city": (400, 8000), "town": (60, 800), "port": (100, 2000), "village": (4, 60),
               "market town": (40, 400)}  # kind -> population range, in fifties
TERRAINS = ["mountainous", "hilly", "flat and fertile", "forested", "marshy", "dry and rocky", "coastal"]
INDUSTRIES = ["weaving", "shipbuilding", "salt mining", "glassmaking", "wine", "wool", "iron foundries", "fishing",
              "printing", "clockmaking", "pottery", "timber", "silver mining", "cheese", "tanning", "brewing"]
INSTITUTION_KINDS = ["University", "Academy of Arts", "Conservatory", "Observatory", "College of Medicine",
                     "Royal Library", "School of Engineering", "Botanical Garden", "Academy of Sciences"]
ADJECTIVES = ["Silent", "Golden", "Broken", "Distant", "Crimson", "Hidden", "Winter", "Last", "Iron", "Pale",
              "Wandering", "Quiet", "Burning", "Northern", "Bitter", "Gentle", "Hollow", "Evening", "Lost", "Bright"]
NOUNS = ["Harbour", "Garden", "Lantern", "Orchard", "Mirror", "Tower", "Bridge", "Meadow", "Shepherd", "Voyage",
         "Bell", "Archer", "Feast", "Storm", "Mill", "Crown", "Letter", "Forest", "Widow", "Falcon"]
TOPICS = ["Curves", "Numbers", "Motion", "Light", "Heat", "Tides", "Comets", "Fevers", "Salts", "Mosses",
          "Magnetism", "Probability", "Proportion", "Memory", "Justice", "Perspective", "the Pulse", "Crystals"]
KEYS = ["C major", "D minor", "E flat major", "F major", "G minor", "A major", "B flat major"]

# occupation -> (noun for a work, title patterns); the {Slots} are filled by `_make_works`
OCCUPATIONS = {
    "painter": ("painting", ["The {Adj} {Noun}", "{Place} at Dusk", "Portrait of {First}", "The {Noun} of {Place}"]),
    "poet": ("collection of poems", ["Songs of the {Noun}", "{Adj} Hours", "The {Adj} {Noun}", "Odes to {Place}"]),
    "novelist": ("novel", ["The {Noun} of {Place}", "The {Adj} {Noun}", "{First} and the {Noun}", "{Adj} {Noun}s"]),
    "composer": ("composition", ["Symphony in {Key}", "The {Adj} Mass", "{Place} Suite", "Concerto in {Key}"]),
    "architect": ("building", ["the {Place} Town Hall", "the {Adj} Tower", "the Cathedral of {Place}"]),
    "astronomer": ("treatise", ["On the Motions of {Topic}", "Tables of {Topic}", "A Catalogue of Stars"]),
    "mathematician": ("treatise", ["Treatise on {Topic}", "Elements of {Topic}", "On {Topic}"]),
    "physician": ("medical treatise", ["Observations on {Topic}", "On {Topic} in Children", "The Physician's {Noun}"]),
    "botanist": ("flora", ["Flora of {Region}", "The Mosses of {Place}", "A Herbal of {Region}"]),
    "sculptor": ("statue", ["The {Adj} {Noun}", "Monument to {First}", "The {Noun} of {Place}"]),
    "cartographer": ("atlas", ["Atlas of {Region}", "Charts of the {Sea}", "A Map of {Region}"]),
    "philosopher": ("essay", ["Essay on {Topic}", "Letters on {Topic}", "The {Adj} {Noun}"]),
    "engineer": ("engineering work", ["the {River} Bridge", "the {Place} Canal", "the {Adj} Lighthouse"]),
    "historian": ("history", ["A History of {Region}", "Chronicles of {Place}", "The Wars of {Region}"]),
    "chemist": ("treatise", ["Elements of {Topic}", "Experiments on {Topic}", "On the Nature of {Topic}"]),
}
# where each occupation is taught, so that education and teachers make sense together
SCHOOL_FOR = {"painter": "Academy of Arts", "sculptor": "Academy of Arts", "architect": "School of Engineering",
              "engineer": "School of Engineering", "composer": "Conservatory", "astronomer": "Observatory",
              "physician": "College of Medicine", "botanist": "Botanical Garden", "chemist": "Academy of Sciences"}


# ----------------------------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------------------------


class _Entity:
    """Entities refer to each other in cycles (teacher and pupils): show only the name, never the whole graph."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(eq=False, repr=False)
class Region(_Entity):
    name: str
    terrain: str
    capital: Place | None = None
    places: list[Place] = field(default_factory=list)
    rivers: list[River] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class River(_Entity):
    name: str
    length_km: int
    source: Region
    sea: str
    places: list[Place] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class Place(_Entity):
    name: str
    kind: str
    region: Region
    river: River
    founded: int
    population: int
    industry: str
    natives: list[Person] = field(default_factory=list)
    institutions: list[Institution] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class Institution(_Entity):
    name: str
    kind: str
    place: Place
    founded: int
    founder: Person | None = None
    members: list[Person] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class Person(_Entity):
    first: str
    family: str
    gender: str
    birth_year: int
    death_year: int
    birthplace: Place
    deathplace: Place
    occupation: str
    institution: Institution | None = None
    mentor: Person | None = None
    friend: Person | None = None
    residence: Place | None = None
    move_year: int = 0
    spouse: Person | None = None
    marriage_year: int = 0
    siblings: list[Person] = field(default_factory=list)
    students: list[Person] = field(default_factory=list)
    works: list[tuple[str, int]] = field(default_factory=list)  # (title, year), the best known first
    founded: list[Institution] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.first} {self.family}"


@dataclass
class World:
    regions: list[Region]
    seas: list[str]
    rivers: list[River]
    places: list[Place]
    institutions: list[Institution]
    people: list[Person]

    def entities(self) -> list[object]:
        """Every entity that gets an article, in a fixed order."""
        return [*self.people, *self.places, *self.institutions, *self.rivers, *self.regions]


class _Names:
    """Draws fictional names, never the same one twice in a world."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def draw(self, ending_kind: str, syllables: tuple[int, int] = (1, 2)) -> str:
        while True:
            parts = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(self.rng.randint(*syllables))]
            name = ("".join(parts) + self.rng.choice(CODAS) + self.rng.choice(ENDINGS[ending_kind])).capitalize()
            if name not in self.used and 4 <= len(name) <= 12:
                self.used.add(name)
                return name


@lru_cache(maxsize=4)
def build_world(seed: int = 0) -> World:
    """Build the world for `seed` (cached: the corpus and the QA set of one seed share it; do not mutate it)."""
    rng = random.Random(f"demo-world:{seed}")
    names = _Names(rng)
    regions = [Region(names.draw("region"), rng.choice(TERRAINS)) for _ in range(NUM_REGIONS)]
    seas = [f"{names.draw('sea')} Sea" for _ in range(NUM_SEAS)]
    rivers = [River(names.draw("river"), rng.randrange(40, 900), rng.choice(regions), rng.choice(seas))
              for _ in range(NUM_RIVERS)]
    places = [_make_place(rng, names, regions, rivers) for _ in range(NUM_PLACES)]
    for region in regions:
        region.capital = max(region.places, key=lambda p: p.population) if region.places else None
    institutions = [_make_institution(rng, places) for _ in range(NUM_INSTITUTIONS)]
    people = _make_people(rng, names, places)
    _connect_people(rng, people, institutions, places)
    words = _title_words({"Sea": seas, "Place": [p.name for p in places], "Region": [r.name for r in regions],
                          "River": [r.name for r in rivers]})
    for person in people:
        person.works = _make_works(rng, person, words)
    return World(regions, seas, rivers, places, institutions, people)


def _make_place(rng: random.Random, names: _Names, regions: list[Region], rivers: list[River]) -> Place:
    river = rng.choice(rivers)
    region = river.source if rng.random() < 0.5 else rng.choice(regions)
    kind = rng.choice(list(PLACE_KINDS))
    low, high = PLACE_KINDS[kind]
    place = Place(names.draw("place"), kind, region, river, rng.randrange(820, 1650),
                  rng.randrange(low, high) * 50, rng.choice(INDUSTRIES))
    region.places.append(place)
    river.places.append(place)
    if river not in region.rivers:
        region.rivers.append(river)
    return place


def _make_institution(rng: random.Random, places: list[Place]) -> Institution:
    place, kind = rng.choice(places), rng.choice(INSTITUTION_KINDS)
    name = f"{kind} of {place.name}" if rng.random() < 0.6 else f"{place.name} {kind}"
    if any(i.name == name for i in place.institutions):
        name = f"New {name}"
    institution = Institution(name, kind, place, founded=0)
    place.institutions.append(institution)
    return institution


def _make_people(rng: random.Random, names: _Names, places: list[Place]) -> list[Person]:
    """Families of one to four children, born a few years apart in the same town.

    First names come from a shared pool (as in real life, many people share one); family names are unique, and
    siblings get different first names, so every full name is unique.
    """
    first_names = {gender: [names.draw(gender, (1, 1)) for _ in range(FIRST_NAMES_PER_GENDER)]
                   for gender in ["female", "male"]}
    people = []
    for _ in range(NUM_FAMILIES):
        family, home = names.draw("family"), rng.choice(places)
        first_birth = rng.randrange(FIRST_YEAR, LAST_YEAR)
        children, taken = [], set()
        for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
            gender = rng.choice(["female", "male"])
            first = rng.choice(first_names[gender])
            while first in taken:
                first = rng.choice(first_names[gender])
            taken.add(first)
            birth = first_birth + rng.randrange(0, 12)
            death = birth + rng.randrange(28, 96)
            deathplace = home if rng.random() < 0.4 else rng.choice(places)
            child = Person(first, family, gender, birth, death, home, deathplace, rng.choice(list(OCCUPATIONS)))
            children.append(child)
            home.natives.append(child)
        for child in children:
            child.siblings = [c for c in children if c is not child]
        people.extend(children)
    return people


def _connect_people(rng: random.Random, people: list[Person], institutions: list[Institution],
                    places: list[Place]) -> None:
    """Teachers, friends, spouses, homes, schools and the founders of institutions."""
    _assign_mentors(rng, people)
    by_birth = sorted(people, key=lambda p: p.birth_year)
    births = [p.birth_year for p in by_birth]
    for person in people:
        if rng.random() < 0.5:  # a friend of about the same age, of any occupation
            lo = bisect.bisect_left(births, person.birth_year - 6)
            friend = by_birth[rng.randrange(lo, bisect.bisect_right(births, person.birth_year + 6))]
            if friend is not person and friend.family != person.family:
                person.friend = friend
        if rng.random() < 0.6:
            person.residence = rng.choice(places)
            person.move_year = rng.randrange(person.birth_year + 18, max(person.birth_year + 19, person.death_year - 2))
    singles = [p for p in people if rng.random() < 0.7]
    rng.shuffle(singles)
    for person in singles:
        if person.spouse is None:
            _find_spouse(rng, person, singles)
    for institution in institutions:
        _found_institution(rng, institution, people)
    _assign_schools(rng, people, institutions)


def _assign_mentors(rng: random.Random, people: list[Person]) -> None:
    """Three people in four learned from an older member of their profession, alive when they were sixteen."""
    by_occupation: dict[str, list[Person]] = {}
    for person in sorted(people, key=lambda p: p.birth_year):
        by_occupation.setdefault(person.occupation, []).append(person)
    births = {occupation: [p.birth_year for p in group] for occupation, group in by_occupation.items()}
    for person in people:
        group, years = by_occupation[person.occupation], births[person.occupation]
        lo, hi = bisect.bisect_left(years, person.birth_year - 50), bisect.bisect_right(years, person.birth_year - 15)
        if lo == hi or rng.random() >= 0.75:
            continue
        for _ in range(8):  # rejection sampling: the elder must still be alive when the pupil is sixteen
            elder = group[rng.randrange(lo, hi)]
            if elder.death_year >= person.birth_year + 16:
                person.mentor = elder
                elder.students.append(person)
                break


def _assign_schools(rng: random.Random, people: list[Person], institutions: list[Institution]) -> None:
    """Most people studied at a university or at the school of their profession, founded before they were 16."""
    by_kind: dict[str, list[Institution]] = {}
    for institution in institutions:
        by_kind.setdefault(institution.kind, []).append(institution)
    for person in people:
        kinds = [SCHOOL_FOR.get(person.occupation), "University"]
        suitable = [i for kind in kinds for i in by_kind.get(kind, []) if i.founded <= person.birth_year + 16]
        if suitable and rng.random() < 0.8:
            person.institution = rng.choice(suitable)
            person.institution.members.append(person)


def _find_spouse(rng: random.Random, person: Person, candidates: list[Person]) -> None:
    for _ in range(30):
        other = rng.choice(candidates)
        if (other.spouse is None and other.gender != person.gender and other.family != person.family
                and abs(other.birth_year - person.birth_year) <= 8):
            year = max(person.birth_year, other.birth_year) + rng.randrange(19, 34)
            if year < min(person.death_year, other.death_year):
                person.spouse, other.spouse = other, person
                person.marriage_year = other.marriage_year = year
                return


def _found_institution(rng: random.Random, institution: Institution, people: list[Person]) -> None:
    earliest = institution.place.founded + 5  # no institution before its town
    founder = rng.choice(people)
    if rng.random() < 0.35 or founder.death_year <= max(earliest, founder.birth_year + 26):
        institution.founded = rng.randrange(earliest, max(earliest + 1, 1560))  # an old foundation, no founder
        return
    institution.founder = founder
    institution.founded = rng.randrange(max(earliest, founder.birth_year + 26), founder.death_year)
    founder.founded.append(institution)


def _title_words(world_names: dict[str, list[str]]) -> dict[str, list[str]]:
    """What the {Slots} of the work-title patterns are filled with."""
    first = ["Ilsa", "Maren", "Tobin", "Corvin", "Elowen", "Aldric", "Sabine", "Oren"]
    return {"Adj": ADJECTIVES, "Noun": NOUNS, "Topic": TOPICS, "Key": KEYS, "First": first, **world_names}


def _make_works(rng: random.Random, person: Person, words: dict[str, list[str]]) -> list[tuple[str, int]]:
    """One to four works with the years they were completed; the best known first."""
    patterns = OCCUPATIONS[person.occupation][1]
    last = max(person.birth_year + 22, person.death_year - 1)
    years = sorted(rng.randrange(person.birth_year + 20, last) for _ in range(rng.randint(1, 4)))
    titles = []
    for _ in years:
        title = _SLOT.sub(lambda m: rng.choice(words[m[1]]), rng.choice(patterns))
        titles.append(title if title not in titles else f"{title} II")
    best = rng.randrange(len(years))
    works = list(zip(titles, years, strict=True))
    return [works[best]] + works[:best] + works[best + 1:]


# ----------------------------------------------------------------------------------------------------------------
# Rendering: several paraphrases per fact; each paragraph remembers where each fact's words landed
# ----------------------------------------------------------------------------------------------------------------

PERSON_TEMPLATES = {
    "intro": ["{name} ({birth_year}–{death_year}) was {a_occ} {occupation} from {home_region}.",
              "{name} was {a_occ} {occupation} from {home_region}, born in {birth_year} and died in {death_year}.",
              "{name}, born in {birth_year}, was {a_occ} {occupation} of {home_region} who died in {death_year}.",
              "Born in {birth_year}, {name} was {a_occ} {occupation} from {home_region}; {he} died in {death_year}.",
              "{name} (born {birth_year}, died {death_year}) was {a_occ} {occupation} who worked in {home_region}."],
    "fame": ["{He} is remembered above all for {his} {work_kinds}.", "{His} {work_kinds} are still widely admired.",
             "{He} was among the best known {occupations} of {his} time.", ""],
    "birthplace": ["{name} was born in {birthplace}, a {place_kind} in {home_region}.",
                   "{He} was born in the {place_kind} of {birthplace} on the {birth_river}.",
                   "{His} birthplace was {birthplace}, a {place_kind} on the river {birth_river}.",
                   "{name} grew up in {birthplace}, the {place_kind} where {he} was born.",
                   "{He} was a native of {birthplace} in {home_region}."],
    "sibling": ["{His} {sib_rel}, {sibling}, became {a_sib_occ} {sib_occ}.",
                "{He} grew up with {his} {sib_rel} {sibling}.", "{sibling} was {his} {sib_rel}.",
                "{He} had one {sib_rel}, {sibling}."],
    "siblings": ["{His} siblings were {siblings}.", "{He} was one of {children} children; the others were {siblings}.",
                 "{He} grew up with {his} siblings {siblings}."],
    "institution": ["{He} studied at the {institution}.", "{He} was educated at the {institution}.",
                    "As a young {adult}, {he} attended the {institution}.",
                    "{name} received {his} training at the {institution}."],
    "mentor": ["{His} teacher was the {occupation} {mentor}.", "{He} trained under {mentor}.",
               "{He} was a pupil of {mentor}.", "{mentor} took {him} on as a pupil.",
               "{He} learned the craft from {mentor}, an older {occupation}."],
    "friend": ["{He} was a close friend of the {friend_occ} {friend}.",
               "{His} friendship with the {friend_occ} {friend} lasted for decades.",
               "{He} corresponded for many years with {friend}, {a_friend_occ} {friend_occ}."],
    "residence": ["In {move_year} {he} moved to {residence}.", "{He} settled in {residence} in {move_year}.",
                  "From {move_year} {he} lived in {residence}.",
                  "{He} made {his} home in {residence} from {move_year}."],
    "work": ["{His} best known {work_kind} is {work}, completed in {work_year}.",
             "{He} is best known for {work} ({work_year}).",
             "In {work_year} {he} completed {work}, {his} most celebrated {work_kind}.",
             "{His} most famous {work_kind}, {work}, dates from {work_year}."],
    "other_works": ["Other works by {him} include {works}.", "{He} also produced {works}.",
                    "Among {his} other works are {works}."],
    "students": ["Among {his} pupils were {students}.", "{He} taught {students}.", "{His} pupils included {students}."],
    "founded": ["In {founded_year} {he} founded the {founded_inst}.",
                "{He} founded the {founded_inst} in {founded_year}.",
                "The {founded_inst} was founded by {him} in {founded_year}."],
    "spouse": ["In {marriage_year} {he} married {spouse}.", "{He} married {spouse} in {marriage_year}.",
               "{name} and {spouse} were married in {marriage_year}.",
               "{His} {spouse_rel} was {spouse}, whom {he} married in {marriage_year}."],
    "death": ["{He} died in {deathplace} in {death_year}.", "{name} died at {deathplace} in {death_year}, aged {age}.",
              "{He} spent {his} last years in {deathplace}, where {he} died in {death_year}.",
              "{name} died in {death_year} in {deathplace}."],
}
PLACE_TEMPLATES = {
    "intro": ["{name} is a {kind} in {region}, on the {river}.",
              "{name} is a {kind} in the region of {region}, on the banks of the river {river}.",
              "The {kind} of {name} lies on the {river} in {region}.",
              "{name} is a {kind} of {region}; the river {river} flows through it."],
    "capital": ["It is the capital of the region.", "{name} is the capital and largest settlement of {region}."],
    "population": ["It has about {population} inhabitants.", "About {population} people live there.",
                   "The {kind} has a population of around {population}."],
    "industry": ["It is known for its {industry}.", "Its economy rests on {industry}.",
                 "The {kind} has long been a centre of {industry}.", "{name} is famous for its {industry}."],
    "founded": ["{name} was founded in {founded}.", "The {kind} was founded in {founded}.",
                "Founded in {founded}, {name} grew up around its market.",
                "The first settlement at {name} dates from {founded}."],
    "institutions": ["It is home to {institutions}.", "{name} is the seat of {institutions}."],
    "natives": ["Notable people born in {name} include {natives}.", "{name} is the birthplace of {natives}.",
                "Among the natives of {name} are {natives}."],
}
INSTITUTION_TEMPLATES = {
    "intro": ["The {name} is {a_kind} {kind_noun} in {city}, founded in {founded}.",
              "The {name} was founded in {founded} in {city}.",
              "Founded in {founded}, the {name} is {a_kind} {kind_noun} in {city}."],
    "founder": ["It was founded by {founder}.", "Its founder was the {founder_occ} {founder}.",
                "{founder}, {a_founder_occ} {founder_occ}, founded it."],
    "old": ["It is among the oldest foundations of {region}.", "Its early history is poorly recorded.", ""],
    "members": ["Among those who studied there were {members}.", "Its students included {members}.",
                "{members} studied there."],
}
RIVER_TEMPLATES = {
    "intro": ["The {name} is a river of {source}, {length} kilometres long.",
              "The {name} rises in {source} and runs for {length} kilometres.",
              "The river {name} has its source in {source}; it is {length} kilometres long."],
    "sea": ["It flows into the {sea}.", "It empties into the {sea}.", "Its mouth is on the {sea}."],
    "places": ["Towns on the {name} include {places}.", "The {name} passes {places}.",
               "Along its course lie {places}."],
}
REGION_TEMPLATES = {
    "intro": ["{name} is a region whose land is largely {terrain}.", "The region of {name} is {terrain}.",
              "The land of {name} is mostly {terrain}."],
    "capital": ["Its capital is {capital}.", "The capital of {name} is {capital}.",
                "{capital} is its capital and largest town."],
    "places": ["Other towns of {name} include {places}.", "Its towns include {places}."],
    "rivers": ["The rivers {rivers} flow through it.", "It is crossed by the rivers {rivers}."],
}
KIND_NOUNS = {"University": "university", "Academy of Arts": "art academy", "Conservatory": "music school",
              "Observatory": "observatory", "College of Medicine": "medical college", "Royal Library": "library",
              "School of Engineering": "engineering school", "Botanical Garden": "botanical garden",
              "Academy of Sciences": "learned academy"}
NUMBER_WORDS = {3: "three", 4: "four", 5: "five"}


@dataclass
class Paragraph:
    """One paragraph of an article: its text, where each fact's words start in it, and the slot values used."""

    text: str
    spans: dict[str, tuple[int, str]]  # fact -> (start, text), the first place the fact was written
    slots: dict[str, str]  # every value the article's templates could use (shared by its paragraphs)


class _ParagraphWriter:
    """Builds a paragraph sentence by sentence from templates whose {slots} take the article's values."""

    def __init__(self, rng: random.Random, slots: dict[str, str]):
        self.rng, self.slots, self.parts, self.length, self.spans = rng, slots, [], 0, {}

    def say(self, templates: list[str]) -> None:
        """Write one sentence from a randomly chosen paraphrase, recording where each filled-in value lands."""
        template = self.rng.choice(templates)
        if not template:
            return
        if self.parts:
            self.parts.append(" ")
            self.length += 1
        for literal, slot in _parse(template):
            self.parts.append(literal)
            self.length += len(literal)
            if slot:
                value = self.slots[slot]
                if slot not in self.spans:
                    self.spans[slot] = (self.length, value)
                self.parts.append(value)
                self.length += len(value)

    def paragraph(self) -> Paragraph:
        return Paragraph("".join(self.parts), self.spans, self.slots)


@cache
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    """'{He} was born in {year}.' -> (('', 'He'), (' was born in ', 'year'), ('.', None))"""
    pieces, position = [], 0
    for match in _SLOT.finditer(template):
        pieces.append((template[position:match.start()], match[1]))
        position = match.end()
    return (*pieces, (template[position:], None))


def _strings(slots: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in slots.items()}


def _a(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _plural(noun: str) -> str:
    head, _, tail = noun.partition(" of ")
    head = head[:-1] + "ies" if head.endswith("y") and head[-2] not in "aeiou" else head + "s"
    return f"{head} of {tail}" if tail else head


def _join(items: list[str]) -> str:
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pronouns(gender: str) -> dict[str, str]:
    he, his, him = ("she", "her", "her") if gender == "female" else ("he", "his", "him")
    return {"he": he, "He": he.capitalize(), "his": his, "His": his.capitalize(), "him": him}


def _person_slots(person: Person) -> dict[str, object]:
    work, work_year = person.works[0]
    slots = {"name": person.name, **_pronouns(person.gender), "birth_year": person.birth_year,
             "death_year": person.death_year, "occupation": person.occupation, "a_occ": _a(person.occupation),
             "occupations": _plural(person.occupation), "home_region": person.birthplace.region.name,
             "birthplace": person.birthplace.name, "place_kind": person.birthplace.kind,
             "birth_river": person.birthplace.river.name, "deathplace": person.deathplace.name,
             "age": person.death_year - person.birth_year, "adult": "woman" if person.gender == "female" else "man",
             "work": work, "work_year": work_year, "work_kind": OCCUPATIONS[person.occupation][0],
             "work_kinds": _plural(OCCUPATIONS[person.occupation][0])}
    if len(person.siblings) == 1:
        sibling = person.siblings[0]
        slots.update(sibling=sibling.name, sib_rel="sister" if sibling.gender == "female" else "brother",
                     sib_occ=sibling.occupation, a_sib_occ=_a(sibling.occupation))
    elif person.siblings:
        slots.update(siblings=_join([s.name for s in person.siblings]),
                     children=NUMBER_WORDS[len(person.siblings) + 1])
    if person.institution:
        slots["institution"] = person.institution.name
    if person.mentor:
        slots["mentor"] = person.mentor.name
    if person.spouse:
        slots.update(spouse=person.spouse.name, marriage_year=person.marriage_year,
                     spouse_rel="wife" if person.spouse.gender == "female" else "husband")
    if person.friend:
        slots.update(friend=person.friend.name, friend_occ=person.friend.occupation,
                     a_friend_occ=_a(person.friend.occupation))
    if person.residence:
        slots.update(residence=person.residence.name, move_year=person.move_year)
    if person.founded:
        slots.update(founded_inst=person.founded[0].name, founded_year=person.founded[0].founded)
    slots["works"] = _join([f"{title} ({year})" for title, year in person.works[1:]])
    slots["students"] = _join([s.name for s in person.students[:5]])
    return _strings(slots)


def _render_person(rng: random.Random, person: Person) -> list[Paragraph]:
    slots, t = _person_slots(person), PERSON_TEMPLATES
    intro, early, career, later = (_ParagraphWriter(rng, slots) for _ in range(4))
    intro.say(t["intro"])
    intro.say(t["fame"])
    early.say(t["birthplace"])
    if person.siblings:
        early.say(t["sibling"] if len(person.siblings) == 1 else t["siblings"])
    for fact in ["institution", "mentor"]:
        if fact in slots:
            early.say(t[fact])
    if "residence" in slots:
        career.say(t["residence"])
    career.say(t["work"])
    for fact in ["works", "students"]:
        if slots[fact]:
            career.say(t["other_works" if fact == "works" else fact])
    if "founded_inst" in slots:
        career.say(t["founded"])
    for fact in ["friend", "spouse"]:
        if fact in slots:
            later.say(t[fact])
    later.say(t["death"])
    return [w.paragraph() for w in (intro, early, career, later)]


def _render_place(rng: random.Random, place: Place) -> list[Paragraph]:
    natives = [f"the {p.occupation} {p.name}" for p in place.natives[:6]]
    slots = {"name": place.name, "kind": place.kind, "region": place.region.name, "river": place.river.name,
             "population": f"{place.population:,}", "industry": place.industry, "founded": place.founded,
             "institutions": _join([f"the {i.name}" for i in place.institutions]), "natives": _join(natives)}
    slots = _strings(slots)
    intro, history = _ParagraphWriter(rng, slots), _ParagraphWriter(rng, slots)
    intro.say(PLACE_TEMPLATES["intro"])
    if place.region.capital is place:
        intro.say(PLACE_TEMPLATES["capital"])
    intro.say(PLACE_TEMPLATES["population"])
    intro.say(PLACE_TEMPLATES["industry"])
    history.say(PLACE_TEMPLATES["founded"])
    if place.institutions:
        history.say(PLACE_TEMPLATES["institutions"])
    if natives:
        history.say(PLACE_TEMPLATES["natives"])
    return [intro.paragraph(), history.paragraph()]


def _render_institution(rng: random.Random, institution: Institution) -> list[Paragraph]:
    kind_noun, founder = KIND_NOUNS[institution.kind], institution.founder
    slots = {"name": institution.name, "kind_noun": kind_noun, "a_kind": _a(kind_noun),
             "city": institution.place.name, "founded": institution.founded, "region": institution.place.region.name,
             "members": _join([m.name for m in institution.members[:6]])}
    if founder:
        slots.update(founder=founder.name, founder_occ=founder.occupation, a_founder_occ=_a(founder.occupation))
    writer = _ParagraphWriter(rng, _strings(slots))
    writer.say(INSTITUTION_TEMPLATES["intro"])
    writer.say(INSTITUTION_TEMPLATES["founder" if founder else "old"])
    if institution.members:
        writer.say(INSTITUTION_TEMPLATES["members"])
    return [writer.paragraph()]


def _render_river(rng: random.Random, river: River) -> list[Paragraph]:
    slots = {"name": river.name, "source": river.source.name, "length": river.length_km, "sea": river.sea,
             "places": _join([p.name for p in river.places[:8]])}
    writer = _ParagraphWriter(rng, _strings(slots))
    writer.say(RIVER_TEMPLATES["intro"])
    writer.say(RIVER_TEMPLATES["sea"])
    if river.places:
        writer.say(RIVER_TEMPLATES["places"])
    return [writer.paragraph()]


def _render_region(rng: random.Random, region: Region) -> list[Paragraph]:
    others = [p.name for p in region.places if p is not region.capital][:8]
    slots = {"name": region.name, "terrain": region.terrain, "capital": region.capital.name if region.capital else "",
             "places": _join(others), "rivers": _join([r.name for r in region.rivers[:6]])}
    writer = _ParagraphWriter(rng, _strings(slots))
    writer.say(REGION_TEMPLATES["intro"])
    for fact, present in [("capital", region.capital), ("places", others), ("rivers", region.rivers)]:
        if present:
            writer.say(REGION_TEMPLATES[fact])
    return [writer.paragraph()]


RENDERERS = {Person: _render_person, Place: _render_place, Institution: _render_institution,
             River: _render_river, Region: _render_region}


def render_article(entity: object, rng: random.Random) -> list[Paragraph]:
    """An encyclopedia article about `entity` (its paragraphs, empty ones left out), paraphrases drawn from `rng`."""
    return [p for p in RENDERERS[type(entity)](rng, entity) if p.text]


# ----------------------------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------------------------


def generate_documents(seed: int = 0, num_documents: int | None = None) -> list[str]:
    """The demo pretraining corpus: one encyclopedia article a string, its paragraphs joined by "\\n".

    Articles come in a seeded shuffled order; `num_documents` keeps the first ones (all of them if there are
    fewer), from the same world, so a small corpus is a prefix of the full one. The full corpus has about 19,600
    articles and 2.4 million tokens of a byte-level BPE with 8,000 entries.
    """
    entities = _corpus_order(seed)
    if num_documents is not None:
        if num_documents < 0:
            raise ValueError(f"num_documents must not be negative, got {num_documents}")
        entities = entities[:num_documents]
    return ["\n".join(p.text for p in render_article(e, random.Random(f"demo-corpus:{seed}:{i}")))
            for i, e in enumerate(entities)]


@lru_cache(maxsize=4)
def _corpus_order(seed: int) -> list[object]:
    entities = build_world(seed).entities()
    random.Random(f"demo-corpus-order:{seed}").shuffle(entities)
    return entities


# ----------------------------------------------------------------------------------------------------------------
# The question-answering set
# ----------------------------------------------------------------------------------------------------------------

# article kind -> fact -> paraphrased questions; the answer is where the fact was written in the paragraph
QUESTIONS = {
    Person: {
        "birth_year": ["In what year was {name} born?", "When was {name} born?", "What year was {name} born in?"],
        "death_year": ["In what year did {name} die?", "When did {name} die?", "What year did {name} die in?"],
        "occupation": ["What was {name}'s occupation?", "What was the profession of {name}?",
                       "What did {name} work as?"],
        "birthplace": ["Where was {name} born?", "In which {place_kind} was {name} born?",
                       "What is the birthplace of {name}?"],
        "sibling": ["Who was {name}'s {sib_rel}?", "What was the name of {name}'s {sib_rel}?",
                    "Which {sib_rel} did {name} have?"],
        "institution": ["Where did {name} study?", "At which institution was {name} educated?",
                        "Which school did {name} attend?"],
        "mentor": ["Who was {name}'s teacher?", "Under whom did {name} train?", "Who taught {name}?"],
        "residence": ["Where did {name} move in {move_year}?", "Where did {name} live from {move_year}?"],
        "move_year": ["In what year did {name} move to {residence}?", "When did {name} settle in {residence}?"],
        "work": ["What is {name}'s best known {work_kind}?", "Which {work_kind} is {name} best known for?",
                 "What is the most famous {work_kind} by {name}?"],
        "work_year": ["When did {name} complete {work}?", "In which year did {name} finish {work}?"],
        "founded_inst": ["What did {name} found in {founded_year}?", "Which institution did {name} found?"],
        "friend": ["Who was {name}'s friend, the {friend_occ}?", "Which {friend_occ} was a friend of {name}?"],
        "spouse": ["Who did {name} marry?", "Who was {name}'s {spouse_rel}?", "To whom was {name} married?"],
        "marriage_year": ["In what year did {name} marry {spouse}?", "When did {name} and {spouse} marry?"],
        "deathplace": ["Where did {name} die?", "In which place did {name} die?"],
    },
    Place: {
        "region": ["In which region is {name}?", "Which region is {name} in?", "{name} is a {kind} in which region?"],
        "river": ["On which river does {name} lie?", "Which river flows through {name}?",
                  "{name} lies on the banks of which river?"],
        "population": ["How many people live in {name}?", "What is the population of {name}?",
                       "About how many inhabitants does {name} have?"],
        "industry": ["What is {name} known for?", "What is the main industry of {name}?",
                     "What does the economy of {name} rest on?"],
        "founded": ["When was {name} founded?", "In what year was {name} founded?"],
    },
    Institution: {
        "city": ["Where is the {name}?", "In which town is the {name}?", "Where does the {name} stand?"],
        "founded": ["When was the {name} founded?", "In what year was the {name} established?"],
        "founder": ["Who founded the {name}?", "Who was the founder of the {name}?", "By whom was the {name} founded?"],
    },
}
QA_KINDS = (Person, Place, Institution)
QA_VALIDATION_FRACTION = 0.15  # of the entities with QA articles, held out for the validation split
QA_DEFAULT_ARTICLES = {"train": 1000, "validation": 250}


def generate_squad(seed: int = 0, num_articles: int | None = None, questions_per_article: int = 4,
                   split: str = "train") -> dict:
    """Questions about the demo world in SQuAD v1.1's JSON layout; every answer is a span of its context.

    `split` is "train" or "validation": the two cover disjoint people, towns and institutions (a seeded 15% of
    them are held out for validation). `num_articles` defaults to 1000 for train and 250 for validation; each
    article asks up to `questions_per_article` questions, spread over its paragraphs. The contexts are the
    corpus's articles about those entities, written with other paraphrases than in the pretraining corpus.
    """
    if split not in QA_DEFAULT_ARTICLES:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    entities = _qa_entities(seed, split)
    num_articles = QA_DEFAULT_ARTICLES[split] if num_articles is None else num_articles
    if not 1 <= num_articles <= len(entities):
        raise ValueError(f"num_articles must be between 1 and {len(entities)} for split {split!r}, got {num_articles}")
    if questions_per_article < 1:
        raise ValueError(f"questions_per_article must be at least 1, got {questions_per_article}")
    data = [_squad_article(entity, random.Random(f"demo-qa:{seed}:{split}:{i}"), f"{split}-{i}", questions_per_article)
            for i, entity in enumerate(entities[:num_articles])]
    return {"version": "demo", "data": data}


@lru_cache(maxsize=8)
def _qa_entities(seed: int, split: str) -> list[object]:
    entities = [e for e in build_world(seed).entities() if isinstance(e, QA_KINDS)]
    random.Random(f"demo-qa-split:{seed}").shuffle(entities)
    held_out = int(len(entities) * QA_VALIDATION_FRACTION)
    return entities[:held_out] if split == "validation" else entities[held_out:]


def _squad_article(entity: object, rng: random.Random, id_prefix: str, num_questions: int) -> dict:
    """One SQuAD article: the paragraphs that got questions, each with its questions and answer spans."""
    paragraphs = render_article(entity, rng)
    questions = QUESTIONS[type(entity)]
    candidates = [(i, fact) for i, p in enumerate(paragraphs) for fact in p.spans if fact in questions]
    unique = list({fact: (i, fact) for i, fact in reversed(candidates)}.values())  # each fact asked once, first place
    chosen = sorted(rng.sample(unique, min(num_questions, len(unique))))
    out = []
    for i, paragraph in enumerate(paragraphs):
        facts = [fact for j, fact in chosen if j == i]
        if facts:
            qas = [_question(paragraph, fact, questions[fact], rng, f"{id_prefix}-{i}-{fact}") for fact in facts]
            out.append({"context": paragraph.text, "qas": qas})
    return {"title": entity.name, "paragraphs": out}


def _question(paragraph: Paragraph, fact: str, templates: list[str], rng: random.Random, qid: str) -> dict:
    start, text = paragraph.spans[fact]
    question = _SLOT.sub(lambda m: paragraph.slots[m[1]], rng.choice(templates))
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


# ----------------------------------------------------------------------------------------------------------------
# The classification set: acceptability, as GLUE's CoLA
# ----------------------------------------------------------------------------------------------------------------

ACCEPTABILITY_LABELS = ("unacceptable", "acceptable")  # CoLA's names, in its order
ACCEPTABILITY_DEFAULT_SENTENCES = {"train": 3000, "validation": 1000}
# Sentences of 6 to 16 words: two swapped words in three are too easy to spot, and in thirty too hard for minutes
MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS = 6, 16
_SENTENCE_END = re.compile(r"(?<=\.) (?=[A-Z])")


def generate_acceptability(seed: int = 0, split: str = "train", num_sentences: int | None = None) -> list[dict]:
    """Sentences about the demo world labelled as GLUE's CoLA labels sentences: `acceptable` when written as the
    world's articles are written, `unacceptable` when two of its words (chosen at random, not equal, the first one
    left in place) have traded places. The two kinds alternate, so the labels are balanced. Swapping keeps every
    word: a model that only counts words cannot tell the two apart; one that knows how the world's sentences go can.

    One sentence (of MIN_SENTENCE_WORDS to MAX_SENTENCE_WORDS words) per entity, from its article rendered with
    other paraphrases than the corpus's, about the entities of `generate_squad`'s split (`split` "train" or
    "validation": disjoint people, towns and institutions). `num_sentences` defaults to 3000 for train and 1000 for
    validation. Drawn from a stream of its own, seeded "demo-acceptability:...": the corpus and the QA set are the
    same with or without it."""
    if split not in ACCEPTABILITY_DEFAULT_SENTENCES:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    entities = _qa_entities(seed, split)
    num_sentences = ACCEPTABILITY_DEFAULT_SENTENCES[split] if num_sentences is None else num_sentences
    if not 1 <= num_sentences <= len(entities):
        raise ValueError(f"num_sentences must be between 1 and {len(entities)} for split {split!r}, got "
                         f"{num_sentences}")
    rows: list[dict] = []
    for i, entity in enumerate(entities):
        if len(rows) == num_sentences:
            break
        rng = random.Random(f"demo-acceptability:{seed}:{split}:{i}")
        sentences = [sentence for paragraph in render_article(entity, rng)
                     for sentence in _SENTENCE_END.split(paragraph.text)
                     if MIN_SENTENCE_WORDS <= len(sentence.split()) <= MAX_SENTENCE_WORDS]
        if sentences:
            sentence, acceptable = rng.choice(sentences), len(rows) % 2 == 0
            rows.append({"id": f"{split}-{i}", "sentence": sentence if acceptable else _swap_two_words(sentence, rng),
                         "label": ACCEPTABILITY_LABELS[acceptable]})
    return rows


def acceptability_capacity(split: str = "train", seed: int = 0) -> int:
    """The most sentences generate_acceptability can give for `split` (one per entity of that split)."""
    return len(_qa_entities(seed, split))


def _swap_two_words(sentence: str, rng: random.Random) -> str:
    """The sentence with two different words swapped, its first word and its final full stop left in place (a
    sentence that starts in lower case or ends without a full stop would give itself away)."""
    body, stop = (sentence[:-1], ".") if sentence.endswith(".") else (sentence, "")
    words = body.split()
    while True:
        a, b = rng.sample(range(1, len(words)), 2)
        if words[a] != words[b]:
            words[a], words[b] = words[b], words[a]
            return " ".join(words) + stop
