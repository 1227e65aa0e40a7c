"""The demo world's language: a small English grammar of objects, colours, numbers, actions and places.

Sentences are lowercase words without punctuation (the way MLS transcripts are written), 4 to 11 words long, drawn
from a ``random.Random``; the same seed gives the same sentences on every machine.
"""

from __future__ import annotations

import random

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey", "gold",
           "silver", "violet", "cyan", "beige"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
           "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty", "forty",
           "fifty", "a hundred"]
SIZES = ["big", "small", "tiny", "huge", "long", "short", "heavy", "light", "old", "new", "round", "square", "soft",
         "shiny", "wooden", "broken", "clean", "dirty", "warm", "cold"]
OBJECTS = {  # singular: plural
    "ball": "balls", "box": "boxes", "cup": "cups", "book": "books", "chair": "chairs", "table": "tables",
    "lamp": "lamps", "key": "keys", "hat": "hats", "shoe": "shoes", "coat": "coats", "bag": "bags",
    "bottle": "bottles", "plate": "plates", "spoon": "spoons", "fork": "forks", "knife": "knives", "clock": "clocks",
    "phone": "phones", "pen": "pens", "pencil": "pencils", "brush": "brushes", "candle": "candles",
    "basket": "baskets", "blanket": "blankets", "pillow": "pillows", "window": "windows", "door": "doors",
    "car": "cars", "bus": "buses", "boat": "boats", "train": "trains", "plane": "planes", "bicycle": "bicycles",
    "kite": "kites", "drum": "drums", "guitar": "guitars", "piano": "pianos", "flower": "flowers", "tree": "trees",
    "apple": "apples", "banana": "bananas", "orange": "oranges", "lemon": "lemons", "cake": "cakes",
    "cookie": "cookies", "egg": "eggs", "fish": "fish", "bird": "birds", "cat": "cats", "dog": "dogs",
    "horse": "horses", "rabbit": "rabbits", "mouse": "mice", "duck": "ducks", "frog": "frogs", "sheep": "sheep",
    "cow": "cows", "star": "stars", "moon": "moons", "stone": "stones", "shell": "shells", "ring": "rings",
    "coin": "coins", "map": "maps", "letter": "letters", "ladder": "ladders", "bucket": "buckets",
    "hammer": "hammers", "rope": "ropes", "tent": "tents", "flag": "flags", "robot": "robots", "puzzle": "puzzles",
    "jacket": "jackets", "glove": "gloves", "sock": "socks", "umbrella": "umbrellas", "mirror": "mirrors",
    "camera": "cameras", "radio": "radios", "balloon": "balloons", "feather": "feathers", "button": "buttons",
}
PLACES = ["kitchen", "garden", "table", "bed", "sofa", "shelf", "desk", "floor", "roof", "bridge", "river", "lake",
          "beach", "forest", "park", "street", "station", "market", "school", "library", "office", "garage",
          "cupboard", "drawer", "basket", "box", "fence", "wall", "window", "door", "hill", "field", "farm",
          "house", "tower", "castle", "harbour", "island", "mountain", "village", "city", "shop", "bakery",
          "hospital", "museum"]
PREPOSITIONS = ["on", "under", "behind", "beside", "near", "in", "inside", "above", "below", "next to", "in front of"]
ACTIONS = ["take", "bring", "find", "move", "open", "close", "paint", "clean", "wash", "carry", "hide", "show",
           "throw", "catch", "push", "pull", "lift", "drop", "hold", "give", "sell", "buy", "build", "fix", "count",
           "cut", "fold", "fill", "empty", "turn", "touch", "watch", "draw", "pack", "keep", "leave", "send",
           "share", "need", "want"]
PEOPLE = ["the farmer", "the teacher", "the doctor", "the baker", "the driver", "the painter", "the singer",
          "the sailor", "the child", "the girl", "the boy", "my friend", "my sister", "my brother", "our neighbour",
          "the old man", "the little girl", "the king", "the queen", "the pilot"]
TIMES = ["today", "tomorrow", "tonight", "this morning", "every day", "after lunch", "before dinner", "on monday",
         "on friday", "at noon", "right now", "later"]
MOODS = ["please", "quickly", "slowly", "carefully", "gently"]

TEMPLATES = [
    "the {size} {colour} {object} is {prep} the {place}",
    "the {colour} {object} is {prep} the {place}",
    "{number} {colour} {objects} are {prep} the {place}",
    "there are {number} {objects} {prep} the {place}",
    "{mood} {action} the {colour} {object}",
    "{mood} {action} the {size} {object} to the {place}",
    "can you {action} the {colour} {object} {prep} the {place}",
    "where is the {size} {colour} {object}",
    "i see {number} {size} {objects} near the {place}",
    "{person} will {action} the {colour} {object} {time}",
    "{person} has {number} {colour} {objects}",
    "{person} wants to {action} the {object} in the {place}",
    "do not {action} the {size} {object} {time}",
    "we need {number} {objects} for the {place} {time}",
    "is the {object} {prep} the {size} {place}",
    "{person} put the {colour} {object} {prep} the {place}",
]


def vocabulary() -> set[str]:
    """Every word the grammar can say."""
    words = set()
    for group in (COLOURS, NUMBERS, SIZES, PLACES, PREPOSITIONS, ACTIONS, PEOPLE, TIMES, MOODS, TEMPLATES):
        for phrase in group:
            words.update(w for w in phrase.split() if not w.startswith("{"))
    words.update(OBJECTS)
    words.update(OBJECTS.values())
    return words


def sentence(rng: random.Random) -> str:
    """One sentence of the grammar."""
    obj = rng.choice(sorted(OBJECTS))
    fields = {"size": rng.choice(SIZES), "colour": rng.choice(COLOURS), "object": obj, "objects": OBJECTS[obj],
              "prep": rng.choice(PREPOSITIONS), "place": rng.choice(PLACES), "number": rng.choice(NUMBERS),
              "mood": rng.choice(MOODS), "action": rng.choice(ACTIONS), "person": rng.choice(PEOPLE),
              "time": rng.choice(TIMES)}
    return rng.choice(TEMPLATES).format(**fields)


def sentences(seed: int, count: int, exclude: set[str] = frozenset()) -> list[str]:
    """``count`` distinct sentences for ``seed``, none of them in ``exclude``."""
    rng, seen, out = random.Random(f"demo-sentences:{seed}"), set(exclude), []
    while len(out) < count:
        text = sentence(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out
