"""Realistic sample "gold" Iceberg tables for demos and tests.

Posts are built from templates and small vocabularies so that every post has a
known intended sentiment. That label goes to a separate table
(``demo_intended_sentiment``) so it is never part of what a model sees.

Everything is deterministic for a given seed, and generated in batches of at
most ``BATCH_POSTS`` posts so large demos never hold all rows as Python objects.
"""

from __future__ import annotations

import datetime
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, LongType, NestedField, StringType, TimestamptzType

FACT_TABLE = "fact_social_media_reaction_post"
DIM_TABLE = "dim_post_details"
TRUTH_TABLE = "demo_intended_sentiment"  # kept out of the gold tables: never sent to a model

BATCH_POSTS = 50_000
LABELS = ("positive", "negative", "neutral", "mixed")
LABEL_WEIGHTS = (35, 30, 25, 10)
DIM_UPDATE_SHARE = 0.4  # share of updated posts whose text row also gets a new version

_DAY_US = 86_400 * 1_000_000
_EPOCH = datetime.date(1970, 1, 1)

# --- Iceberg schemas -------------------------------------------------------------

FACT_SCHEMA = Schema(
    NestedField(1, "post_key", LongType(), required=True),
    NestedField(2, "channel_key", IntegerType()),
    NestedField(3, "date_key", IntegerType()),
    NestedField(4, "hashtag_key", IntegerType()),
    NestedField(5, "reaction_like", LongType()),
    NestedField(6, "reaction_love", LongType()),
    NestedField(7, "reaction_haha", LongType()),
    NestedField(8, "reaction_wow", LongType()),
    NestedField(9, "reaction_sad", LongType()),
    NestedField(10, "reaction_angry", LongType()),
    NestedField(11, "comment_count", LongType()),
    NestedField(12, "share_count", LongType()),
    NestedField(13, "last_update_time", TimestamptzType(), required=True),
)
DIM_SCHEMA = Schema(
    NestedField(1, "post_key", LongType(), required=True),
    NestedField(2, "channel_key", IntegerType()),
    NestedField(3, "channel_name", StringType()),
    NestedField(4, "author_handle", StringType()),
    NestedField(5, "post_text", StringType()),
    NestedField(6, "post_url", StringType()),
    NestedField(7, "hashtags", StringType()),
    NestedField(8, "language", StringType()),
    NestedField(9, "created_time", TimestamptzType()),
    NestedField(10, "last_update_time", TimestamptzType(), required=True),
)
TRUTH_SCHEMA = Schema(
    NestedField(1, "post_key", LongType(), required=True),
    NestedField(2, "intended_label", StringType(), required=True),
)
FACT_ARROW = FACT_SCHEMA.as_arrow()
DIM_ARROW = DIM_SCHEMA.as_arrow()
TRUTH_ARROW = TRUTH_SCHEMA.as_arrow()


def _day_spec(schema: Schema) -> PartitionSpec:
    source_id = schema.find_field("last_update_time").field_id
    return PartitionSpec(
        PartitionField(source_id=source_id, field_id=1000, transform=DayTransform(), name="last_update_time_day")
    )


# --- Vocabularies ----------------------------------------------------------------
# Names, places and features are chosen to carry no sentiment of their own in
# VADER's lexicon, so the template wording alone decides the label.

CHANNELS = ("facebook", "instagram", "x", "tiktok", "linkedin", "youtube")
PRODUCTS = (
    "Pixel 9", "Galaxy S25", "iPhone 17", "AirPods", "Kindle", "PlayStation 5", "Switch 2",
    "MacBook Air", "Surface Laptop", "Fitbit", "GoPro", "Dyson vacuum", "Instant Pot",
    "Roomba", "Nespresso machine", "e-bike", "standing desk", "headphones", "smartwatch",
    "air fryer", "robot mower", "VR headset", "tablet", "gaming laptop", "espresso grinder",
)
BRANDS = (
    "Nike", "Adidas", "Starbucks", "IKEA", "Spotify", "Netflix", "Uber", "Airbnb", "Delta",
    "Lufthansa", "Zara", "Lego", "Tesla", "Samsung", "Sony", "Nintendo", "Target",
    "Costco", "Walmart", "Patagonia", "Chipotle", "Sephora", "H&M", "Ryanair",
)
ITEMS = (
    "sneakers", "jacket", "latte", "bookshelf", "playlist feature", "series", "app", "backpack",
    "sofa", "running shoes", "skincare set", "burrito bowl", "controller", "hoodie", "lamp",
)
FEATURES = (
    "camera", "battery", "screen", "speakers", "keyboard", "design", "app", "delivery",
    "packaging", "sound", "strap", "checkout", "menu", "staff", "setlist", "venue", "charger",
    "touchpad", "seats", "wifi", "sizing", "interface",
)
PLACES = (
    "Lisbon", "Chicago", "Tokyo", "Brooklyn", "Berlin", "Austin", "Toronto", "Barcelona",
    "Seattle", "Melbourne", "Denver", "Dublin", "Mexico City", "Cape Town", "Oslo", "Nashville",
    "the downtown mall", "the airport", "Central Park", "the harbor", "Main Street",
)
EVENTS = (
    "the marathon", "Comic-Con", "the jazz night", "the product launch", "the season finale",
    "the farmers market", "the tech conference", "the playoff game", "the book expo",
    "the hackathon", "the night market", "the concert", "the trade show", "the film premiere",
    "the open house", "the team offsite",
)
PEOPLE = (
    "Maya", "Jordan", "Priya", "Lucas", "Aisha", "Mateo", "Hannah", "Kenji", "Olivia", "Sam",
    "Coach Rivera", "Dr. Chen", "our manager", "the barista", "the tour guide", "Noah",
)
FOODS = ("tacos", "ramen", "pizza", "croissants", "noodles", "bagels", "pho", "burgers", "sushi")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("8am", "9am", "10:30am", "noon", "1pm", "3pm", "5:30pm", "6pm", "7pm", "8pm")
COLOURS = ("black", "navy", "silver", "green", "white", "sand")
HASHTAGS = (
    "tech", "travel", "music", "food", "gaming", "cycling", "fashion", "coffee", "startup",
    "photography", "weekend", "news", "sports", "books", "movies", "design", "running", "events",
)
FIRST_NAMES = ("maria", "josh", "li", "tom", "anna", "raj", "emma", "kofi", "sara", "ben", "yuki", "leo")
HANDLE_WORDS = ("runs", "eats", "codes", "travels", "reads", "tech", "daily", "official", "photos", "hq")

# --- Templates -------------------------------------------------------------------
# Placeholders: product brand item feature feature2 place event person food
# weekday time colour n.

POSITIVE = (
    "I love my new {product}! The {feature} is amazing 😍",
    "Just tried the new {item} from {brand} and wow, absolutely love it! 🎉",
    "{event} in {place} was awesome!!! Best weekend ever",
    "Huge thanks to {person} for the great help today. Fantastic service!",
    "Best {food} in {place}, hands down. So good 😍",
    "What an amazing crowd at {event}! Still smiling 😊",
    "{brand} customer service is excellent, sorted my order in 5 minutes. Great job!",
    "Loving the new {feature} on the {product}. Super smooth and beautiful",
    "Honestly the {product} is worth every penny. Highly recommend!",
    "We hit {n}k followers today! Thank you all, you are amazing 🎉",
    "lol {person} just made my whole day, love this team",
    "This {product} update is AWESOME, the {feature} feels brand new",
    "{place}, you were wonderful. Can't wait to come back!",
    "So happy with my {item} from {brand}. Arrived early and looks perfect",
    "Congrats to {person} on the award at {event}! Well deserved 🎉",
    "Beautiful morning in {place}. Perfect coffee, great company",
    "The {feature} on this {product} is incredible. Really impressed!",
    "Shoutout to the {brand} team, brilliant work on the new {item}",
    "Had so much fun at {event}! Ten out of ten, would go again",
    "omg the {food} at {event} was SO good. Love love love",
    "Really glad I picked the {product}. The {feature} is great and the {feature2} is excellent",
    "Great vibes at {event} tonight. {person} was fantastic!!",
    "My {item} from {brand} is the best purchase of the year. Love it 😍",
    "Such a lovely team at the {brand} store in {place}. Thank you!",
    "Not bad at all! The {product} is a great upgrade",
)
NEGATIVE = (
    "I hate the new {product} update. The {feature} is terrible 😡",
    "Worst customer service ever from {brand}. Waited 3 hours for nothing",
    "So disappointed with {event} in {place}. Total waste of money",
    "My {product} died after two days. Awful quality, never buying {brand} again",
    "{brand} cancelled my order AGAIN. This is ridiculous 😡",
    "The {feature} on the {product} is awful. Really regret buying it",
    "Delayed flight at {place}, lost luggage and rude staff. Terrible day",
    "Not good. The {product} keeps crashing and {brand} ignores every email",
    "Ugh, {event} was a disaster. Overpriced, crowded and boring",
    "Terrible experience at the {brand} store in {place}, the staff were so rude",
    "Why is the {feature} on my {product} so bad?? Absolutely the worst",
    "I'm so angry. {brand} charged me twice and still no refund 😡",
    "Really sad that {event} got cancelled. Heartbroken 😢",
    "smh {brand} broke the {feature} again with this update. Useless",
    "Not impressed with the {product}. The {feature} is awful and it feels cheap",
    "Horrible traffic to {event}, missed the opening. I hate this",
    "The {item} from {brand} arrived broken. Awful packaging, terrible support",
    "The {product} overheats constantly. Worst purchase I've made this year 👎",
    "Stuck on hold with {brand} for 2 hours. Frustrated and annoyed",
    "The {food} in {place} was cold and bland. Awful, never again 😡",
    "Can't believe how bad the {feature} is on the {product}. Hate it",
    "Another terrible update from {brand}. The {feature} and {feature2} are both broken now",
)
NEUTRAL = (
    "Store opens at {time} on {weekday}.",
    "New episode drops {weekday} at {time}.",
    "{brand} will announce the {product} on {weekday}.",
    "{event} starts at {time} in {place}. Doors open one hour before.",
    "Does anyone know if the {product} comes in {colour}?",
    "Our store in {place} moves to a new address next month.",
    "Reminder: tickets for {event} go on sale {weekday} at {time}.",
    "Which {feature} settings do you use on the {product}?",
    "The {product} ships with a USB-C cable and a manual.",
    "Road closures in {place} on {weekday} for {event}.",
    "Quarterly results will be published on {weekday} at {time}.",
    "Is the {brand} store in {place} open on {weekday}?",
    "{person} will host a panel at {event} at {time}.",
    "Firmware version 2.{n} for the {product} is out now.",
    "We are hiring in {place}. Details on our careers page.",
    "Shipping to {place} takes 3 to 5 business days.",
    "Posting from {place} today. {n} degrees and cloudy.",
    "What time does {event} end on {weekday}?",
    "The {brand} app now has a dark mode option.",
    "The stream of {event} begins at {time}.",
    "Parking for {event} is on level 2, entrance B.",
    "Menu for {weekday}: soup, salad and {food}.",
    "Thread: how the {feature} on the {product} works, step by step 🧵",
    "Notes from {event} are in the team folder.",
    "Anyone going to {event} in {place} this {weekday}?",
    "The {product} is back in stock in {colour}.",
    "Office hours with {person} move to {weekday} at {time}.",
    "How long does the {feature} on the {product} last on a full charge?",
    "{brand} opens a store in {place} on {weekday}.",
    "Here is the schedule for {event}: check-in at {time}, talks after lunch.",
)
MIXED = (
    "Love the {feature} on the {product} but the {feature2} is terrible.",
    "{event} was great, but the lines were awful.",
    "Amazing {food} at {place}, terrible service though.",
    "The {product} looks beautiful but the {feature} is so disappointing.",
    "Great show at {event}, worst parking situation ever.",
    "I hate how expensive {brand} is, but I love their {item}.",
    "Fantastic staff, awful wait times at the branch in {place}.",
    "Happy with the {feature}, really disappointed with the {feature2}.",
    "The {item} from {brand} is awesome but delivery was a nightmare.",
    "Best {food} in {place}, but the prices are ridiculous.",
    "Good {feature}, bad {feature2}. The {product} is a mixed bag.",
    "{person} was brilliant at {event}, the sound was horrible though.",
)
TEMPLATES = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL, "mixed": MIXED}

EMOJI = {
    "positive": ("😍", "🎉", "😊", "👏", "🙌"),
    "negative": ("😡", "😤", "👎", "😞", "🙄"),
    "neutral": ("📅", "📍", "📢", "👀"),
    "mixed": ("🤷", "🤔"),
}
EDIT_NOTES = (
    "(edited)", "Edit: typo.", "Edit: added the link.", "EDIT: updated the time.", "(edit: photos in the comments)",
)
BLANKS = (" ", "   ", "\n", " \t ", "\n\n")

# Reaction mix per label: like, love, haha, wow, sad, angry (percent of engagement).
REACTION_MIX = {
    "positive": (60, 28, 5, 5, 1, 1),
    "negative": (35, 2, 6, 5, 22, 30),
    "neutral": (80, 5, 5, 8, 1, 1),
    "mixed": (50, 12, 6, 8, 10, 14),
}
REACTIONS = ("reaction_like", "reaction_love", "reaction_haha", "reaction_wow", "reaction_sad", "reaction_angry")


# --- Public API ------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    namespace: str
    posts: int  # distinct post_keys
    fact_rows: int
    dim_rows: int
    days: list[datetime.date]  # the days (UTC) that have data, sorted
    snapshots: dict[str, int]  # table name -> number of snapshots written


def seed_gold_tables(
    catalog: Catalog,
    *,
    namespace: str = "gold",
    posts: int = 3000,
    days: int = 7,
    start: datetime.date = datetime.date(2026, 11, 1),
    seed: int = 7,
    snapshots: int = 3,
    update_share: float = 0.15,
    replace: bool = True,
) -> DemoSummary:
    """Write demo posts to ``namespace``'s fact, dim and truth tables.

    Rows go to ``snapshots`` appends per gold table, one per range of days, so
    later updates land in later snapshots. ``replace=False`` keeps existing
    tables and appends new posts after the highest existing post_key.
    """
    if days < 1 or snapshots < 1 or posts < 0 or not 0 <= update_share <= 1:
        raise ValueError("need days >= 1, snapshots >= 1, posts >= 0 and 0 <= update_share <= 1")
    fact, dim, truth = _prepare_tables(catalog, namespace, replace)
    first_key = 1 if replace else _next_post_key(truth)

    writer = _SnapshotWriter(fact, dim, start=start, days=days, snapshots=min(snapshots, days))
    truth_appends = 0
    batches = generate_posts(
        posts=posts, days=days, start=start, seed=seed, first_key=first_key, update_share=update_share
    )
    for fact_batch, dim_batch, truth_batch in batches:
        writer.add(fact_batch, dim_batch)
        truth.append(pa.Table.from_batches([truth_batch]))
        truth_appends += 1
    writer.flush_all()

    return DemoSummary(
        namespace=namespace,
        posts=posts,
        fact_rows=writer.rows[FACT_TABLE],
        dim_rows=writer.rows[DIM_TABLE],
        days=sorted(writer.days),
        snapshots={**writer.appends, TRUTH_TABLE: truth_appends},
    )


def generate_posts(
    *,
    posts: int,
    days: int,
    start: datetime.date,
    seed: int,
    first_key: int = 1,
    update_share: float = 0.15,
) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]]:
    """Yield (fact, dim, truth) record batches covering at most BATCH_POSTS posts each.

    Posts are ordered by creation day, so a batch never has posts created
    before the previous batch's. Fact and dim batches also hold the later
    versions (updates) of their posts.
    """
    rng = random.Random(seed)
    for batch_start in range(0, posts, BATCH_POSTS):
        indices = range(batch_start, min(batch_start + BATCH_POSTS, posts))
        yield _build_batch(
            rng, indices, posts=posts, days=days, start=start, first_key=first_key, update_share=update_share
        )


def intended_labels(catalog: Catalog, namespace: str = "gold") -> dict[int, str]:
    """post_key -> intended label, read from the truth table."""
    table = catalog.load_table((namespace, TRUTH_TABLE)).scan().to_arrow()
    return dict(zip(table["post_key"].to_pylist(), table["intended_label"].to_pylist()))


# --- Tables and snapshots --------------------------------------------------------


def _prepare_tables(catalog: Catalog, namespace: str, replace: bool):
    catalog.create_namespace_if_not_exists(namespace)
    specs = {
        FACT_TABLE: (FACT_SCHEMA, _day_spec(FACT_SCHEMA)),
        DIM_TABLE: (DIM_SCHEMA, _day_spec(DIM_SCHEMA)),
        TRUTH_TABLE: (TRUTH_SCHEMA, PartitionSpec()),
    }
    tables = []
    for name, (schema, spec) in specs.items():
        identifier = (namespace, name)
        if replace:
            try:
                catalog.drop_table(identifier)
            except NoSuchTableError:
                pass
        tables.append(catalog.create_table_if_not_exists(identifier, schema=schema, partition_spec=spec))
    return tables


def _next_post_key(truth_table) -> int:
    keys = truth_table.scan(selected_fields=("post_key",)).to_arrow()["post_key"]
    return (pc.max(keys).as_py() or 0) + 1  # max of an empty table is null


class _SnapshotWriter:
    """Buffers fact/dim rows per day range and appends each range once it is complete.

    Batches arrive ordered by creation day and updates only move forward in
    time, so once a batch has posts created on day D, no later row can fall in
    a range that ends before D.
    """

    def __init__(self, fact, dim, *, start: datetime.date, days: int, snapshots: int):
        self.tables = {FACT_TABLE: fact, DIM_TABLE: dim}
        self.start_day = (start - _EPOCH).days
        self.days_total = days
        self.snapshots = snapshots
        self.pending: dict[int, dict[str, list[pa.RecordBatch]]] = {}
        self.rows = {FACT_TABLE: 0, DIM_TABLE: 0}
        self.days: set[datetime.date] = set()
        self.appends = {FACT_TABLE: 0, DIM_TABLE: 0}

    def add(self, fact_batch: pa.RecordBatch, dim_batch: pa.RecordBatch) -> None:
        for name, batch in ((FACT_TABLE, fact_batch), (DIM_TABLE, dim_batch)):
            dates = pc.cast(batch["last_update_time"], pa.date32())
            self.days.update(pc.unique(dates).to_pylist())
            ranges = pa.array([self._range_of(day) for day in dates.cast(pa.int32()).to_pylist()])
            for snapshot_range in pc.unique(ranges).to_pylist():
                part = batch.filter(pc.equal(ranges, snapshot_range))
                self.pending.setdefault(snapshot_range, {FACT_TABLE: [], DIM_TABLE: []})[name].append(part)
        newest_created = pc.max(pc.cast(dim_batch["created_time"], pa.date32()).cast(pa.int32())).as_py()
        complete_before = self._range_of(newest_created)
        for snapshot_range in sorted(r for r in self.pending if r < complete_before):
            self._flush(snapshot_range)

    def _range_of(self, epoch_day: int) -> int:
        """Which of the `snapshots` equal ranges of days (0 = the first) a day falls in."""
        return (epoch_day - self.start_day) * self.snapshots // self.days_total

    def flush_all(self) -> None:
        for snapshot_range in sorted(self.pending):
            self._flush(snapshot_range)

    def _flush(self, snapshot_range: int) -> None:
        parts = self.pending.pop(snapshot_range)
        for name, batches in parts.items():
            if batches:
                self.tables[name].append(pa.Table.from_batches(batches))
                self.rows[name] += sum(b.num_rows for b in batches)
                self.appends[name] += 1


# --- Row generation --------------------------------------------------------------

_FIELDS = {
    template: tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)
    for templates in TEMPLATES.values()
    for template in templates
}
_VOCAB = {
    "product": PRODUCTS, "brand": BRANDS, "item": ITEMS, "feature": FEATURES, "place": PLACES,
    "event": EVENTS, "person": PEOPLE, "food": FOODS, "weekday": WEEKDAYS, "time": TIMES,
    "colour": COLOURS,
}
_URL_FORMATS = (
    "https://www.facebook.com/{handle}/posts/{key}",
    "https://www.instagram.com/p/{code}/",
    "https://x.com/{handle}/status/{key}",
    "https://www.tiktok.com/@{handle}/video/{key}",
    "https://www.linkedin.com/feed/update/urn:li:activity:{key}/",
    "https://www.youtube.com/watch?v={code}",
)  # same order as CHANNELS
# Share of each batch (of 100+ posts) with null, empty, whitespace-only or very long text.
_SPECIAL_SHARES = {"null": 0.002, "empty": 0.005, "blank": 0.003, "long": 0.0005}


def _build_batch(rng, indices, *, posts, days, start, first_key, update_share):
    fact = [[] for _ in FACT_ARROW]
    dim = [[] for _ in DIM_ARROW]
    truth = [[] for _ in TRUTH_ARROW]
    specials = _pick_specials(rng, len(indices))
    start_us = (start - _EPOCH).days * _DAY_US
    for position, index in enumerate(indices):
        key = first_key + index
        day = index * days // posts  # posts are spread evenly and ordered by day
        label, text = _make_text(rng, specials.get(position))
        # Created before 22:00 and first touched within the hour: both stay on `day`,
        # leaving room for a same-day update when the post is on the last day.
        created = start_us + day * _DAY_US + rng.randrange(22 * 3600) * 1_000_000
        touched = created + rng.randrange(60, 3600) * 1_000_000
        post = _details(rng, key)
        counts = _reactions(rng, label)
        _append(fact, (key, post.channel_key, _date_key(touched), post.hashtag_key, *counts, touched))
        _append(dim, (key, *post.columns, text, post.post_url, post.hashtags, "en", created, touched))
        _append(truth, (key, label))
        if rng.random() < update_share:
            # A new version: same post, more reactions, touched on a later day.
            later = _update_time(rng, touched, day, days, start_us)
            counts = tuple(int(c * rng.uniform(1.1, 2.5)) + 1 for c in counts)
            _append(fact, (key, post.channel_key, _date_key(later), post.hashtag_key, *counts, later))
            if rng.random() < DIM_UPDATE_SHARE:
                edited = _edit(rng, text)
                _append(dim, (key, *post.columns, edited, post.post_url, post.hashtags, "en", created, later))
    return _record_batch(fact, FACT_ARROW), _record_batch(dim, DIM_ARROW), _record_batch(truth, TRUTH_ARROW)


def _append(columns: list[list], row: tuple) -> None:
    for column, value in zip(columns, row, strict=True):
        column.append(value)


def _record_batch(columns: list[list], schema: pa.Schema) -> pa.RecordBatch:
    # Timestamps are kept as microseconds since the epoch; Arrow takes them as-is.
    arrays = [pa.array(column, type=field.type) for column, field in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _date_key(micros: int) -> int:
    day = _EPOCH + datetime.timedelta(days=micros // _DAY_US)
    return day.year * 10_000 + day.month * 100 + day.day


def _pick_specials(rng: random.Random, n: int) -> dict[int, str]:
    """Positions in the batch that get null, empty, blank or very long text."""
    if n < 100:  # tiny demos stay readable
        return {}
    counts = {kind: max(1, round(n * share)) for kind, share in _SPECIAL_SHARES.items()}
    positions = rng.sample(range(n), sum(counts.values()))
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    return dict(zip(positions, kinds))


def _make_text(rng: random.Random, special: str | None) -> tuple[str, str | None]:
    if special == "null":
        return "neutral", None
    if special == "empty":
        return "neutral", ""
    if special == "blank":
        return "neutral", rng.choice(BLANKS)
    label = rng.choices(LABELS, LABEL_WEIGHTS)[0]
    if special == "long":
        return label, _long_text(rng, label)
    return label, _decorate(rng, label, _fill(rng, rng.choice(TEMPLATES[label])))


def _fill(rng: random.Random, template: str) -> str:
    values = {}
    for name in _FIELDS[template]:
        if name == "n":
            values[name] = str(rng.randint(2, 50))
        elif name == "feature2":
            values[name] = rng.choice([f for f in FEATURES if f != values.get("feature")])
        elif name not in values:
            values[name] = rng.choice(_VOCAB[name])
    text = template.format(**values)
    # "{event} starts..." -> "The marathon starts..."; slang openers like "lol" stay lowercase.
    return text[0].upper() + text[1:] if template.startswith("{") else text


def _decorate(rng: random.Random, label: str, text: str) -> str:
    """Give a few percent of posts a URL, @mention, inline #hashtags or an extra emoji."""
    roll = rng.random()
    if roll < 0.03:
        site = rng.choice(("bit.ly", "example.com/p", "shop.example.com/item"))
        return f"{text} https://{site}/{rng.getrandbits(32):08x}"
    if roll < 0.06:
        brand = "".join(ch for ch in rng.choice(BRANDS).lower() if ch.isalnum())
        return f"@{brand}{rng.choice(('', '_us', 'support'))} {text}"
    if roll < 0.09:
        return f"{text} " + " ".join(f"#{tag}" for tag in rng.sample(HASHTAGS, 2))
    if roll < 0.13:
        return f"{text} {rng.choice(EMOJI[label])}"
    return text


def _long_text(rng: random.Random, label: str) -> str:
    # A long rant (or rave): one post of the label repeated past 5,000 characters.
    sentence = _fill(rng, rng.choice(TEMPLATES[label]))
    return " ".join([sentence] * (5_200 // len(sentence) + 1))


def _edit(rng: random.Random, text: str | None) -> str | None:
    # Edits add a neutral note, so the intended label still holds.
    if text is None or not text.strip():
        return text
    return f"{text} {rng.choice(EDIT_NOTES)}"


class _Details(NamedTuple):
    channel_key: int
    channel_name: str
    author_handle: str
    post_url: str
    hashtags: str
    hashtag_key: int | None

    @property
    def columns(self) -> tuple[int, str, str]:
        """The dim columns that precede post_text."""
        return self.channel_key, self.channel_name, self.author_handle


def _details(rng: random.Random, key: int) -> _Details:
    """Channel, author, URL and hashtags of a post; they stay the same across versions."""
    channel = rng.randrange(len(CHANNELS))
    handle = f"{rng.choice(FIRST_NAMES)}_{rng.choice(HANDLE_WORDS)}{rng.randrange(100)}"
    code = format(key * 2_654_435_761 % 2**40, "010x")  # stable, URL-safe id per post
    url = _URL_FORMATS[channel].format(handle=handle, key=key, code=code)
    tags = rng.sample(range(len(HASHTAGS)), rng.choice((0, 0, 1, 1, 2, 3)))
    hashtags = " ".join(f"#{HASHTAGS[t]}" for t in tags)
    return _Details(channel + 1, CHANNELS[channel], handle, url, hashtags, tags[0] + 1 if tags else None)


def _reactions(rng: random.Random, label: str) -> tuple[int, ...]:
    """Six reaction counts, comments and shares; the reaction mix follows the label."""
    engagement = rng.lognormvariate(3.2, 1.2)  # median ~25, long tail of viral posts
    counts = [int(engagement * share / 100 * rng.uniform(0.6, 1.4)) for share in REACTION_MIX[label]]
    heated = label in ("negative", "mixed")  # arguments draw more comments
    comments = int(engagement * rng.uniform(0.05, 0.4 if heated else 0.2))
    shares = int(engagement * rng.uniform(0.01, 0.15))
    return (*counts, comments, shares)


def _update_time(rng: random.Random, touched: int, day: int, days: int, start_us: int) -> int:
    """A later touch 1-3 days on, capped to the last day (then later the same day)."""
    later_day = min(day + rng.randint(1, 3), days - 1)
    if later_day == day:
        return touched + rng.randrange(60, 3600) * 1_000_000
    return start_us + later_day * _DAY_US + rng.randrange(86_400) * 1_000_000
