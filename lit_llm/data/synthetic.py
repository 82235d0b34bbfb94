"""A small generator of simple stories: the fully offline corpus of the ``quickstart`` experiment.

Why generated text: the quickstart must train end to end with no download, and a model should visibly
learn something. These stories read like TinyStories (characters, places, objects, dialogue, a small
plot, often a moral) and have structure a small model picks up within minutes: a name, its pronoun,
the object and the place of the plot stay the same through a story, and plots follow their arc. The
random names, animals, objects, places, details and sentence variants keep the text far from trivial,
and the lexicon (about a thousand words) is large enough for a BPE vocabulary of ~2000 to be reached
by real merges. Compare a model's loss with ``corpus_unigram_entropy``: the loss of a model that
ignores context.

    python -m lit_llm.data.synthetic --out data/raw/quickstart/train.txt --stories 20000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenizer.files import EOT, atomic_write, sweep_stale_temps

GENERATOR_VERSION = 3  # bump whenever the text changes, so that cached corpora are rebuilt


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


GIRLS = _words("""Lily Mia Sue Anna Lucy Emma Zoe Sara Amy Kim Rose Ella Jane Molly Daisy Ruby Lola Nina Grace
    Ivy Hannah Chloe Maya Bella Sophie Julia Olive Penny Hazel Clara Alice Fiona Nora Stella Iris Poppy Wendy
    Tina Kate Megan Holly Luna Violet Ava Mabel Greta Rita Lena Abby Jenny""")
BOYS = _words("""Ben Tom Max Sam Tim Jack Leo Joe Finn Bob Dan Jake Alex Noah Oscar Pete Henry Luke Ryan Theo
    Kevin Oliver Harry Eli Adam Milo Jasper Felix Hugo Ollie Toby Charlie Billy Arthur Simon George Ethan Owen
    Lucas Ian Ted Rex Victor Roy Frank Louis Mark Carl Nick Paul""")
ANIMALS = _words("""cat dog bunny bear duck fox mouse frog bird pig owl puppy kitten lamb squirrel turtle
    horse cow goat hen deer monkey lion tiger elephant giraffe penguin seal fish bee butterfly ladybug snail
    worm ant whale dolphin crab octopus zebra hippo kangaroo koala panda wolf raccoon hedgehog beaver otter
    chick goose swan parrot robin donkey pony""")
TRAITS = _words("""little kind happy brave shy curious small funny clever cheerful gentle friendly busy silly
    sleepy polite playful quiet smart careful helpful lazy grumpy proud""")
ADULTS = (
    ("mom", "she"),
    ("dad", "he"),
    ("grandma", "she"),
    ("grandpa", "he"),
    ("teacher", "she"),
    ("aunt", "she"),
    ("uncle", "he"),
    ("neighbor", "he"),
    ("big sister", "she"),
    ("big brother", "he"),
)
GOOD = _words("happy glad excited proud thankful joyful cheerful delighted calm warm")
BAD = _words("sad upset scared worried lonely grumpy tired angry confused nervous")
COLORS = _words("red blue green yellow pink purple orange brown white black gray golden silver")
ADJECTIVES = _words("""shiny soft big small old new pretty tiny special bright colorful little lovely funny
    fancy magic heavy light wooden striped spotted sparkly round smooth fuzzy squeaky noisy strong""")
OBJECTS = _words("""ball kite hat book drum boat doll shell key box balloon crayon cup rock blanket spoon bell
    truck train robot puzzle scarf sock ribbon button marble whistle basket bucket shovel wagon bike umbrella
    necklace crown feather jar car plane rocket flute guitar horn map compass lamp clock watch ring bracelet
    backpack bag pillow bowl plate bottle pencil paintbrush sticker card letter picture camera mirror ladder
    rope net sled skateboard helmet glove mitten boot shoe jacket coat sweater dress shirt cape mask wand
    stick leaf acorn pinecone stone pebble coin gem star toy block teapot broom brush candle flag""")
FOODS = _phrases("""apples, cookies, cake, sandwiches, bananas, carrots, pie, muffins, oranges, soup,
    pancakes, berries, grapes, pears, cheese, bread, cupcakes, candy, ice cream, popcorn, pizza, noodles,
    rice, eggs, corn, peas, beans, honey, jam, toast, waffles, cherries, plums, peaches, lemons, melons,
    strawberries, blueberries, nuts, seeds, cereal, crackers, pasta, salad, potatoes, tomatoes, cucumbers,
    pumpkin pie""")
FEARS = _phrases("""the dark, the thunder, the deep water, the tall slide, the big waves, the loud noises,
    the spiders, the old house, the big dog, the high tree, the busy road, the strange sounds at night""")
TROUBLES = _phrases("""had a hurt wing, was stuck in a bush, was lost and cold, could not find its mom,
    was stuck in the mud, was very hungry, was caught in a net, had a thorn in its paw,
    was all wet from the rain""")
MAKES = _phrases("""a sandcastle, a tall tower, a little house, a paper boat, a snowman, a big cake,
    a bird house, a block castle, a kite, a card for mom, a drawing of a dragon, a fort of pillows,
    a toy train track""")
MISHAPS = _phrases("""the wind blew it down, a dog ran into it, it fell over, the rain came, a big wave came,
    a goat ate part of it, the cat knocked it over, it broke into pieces""")
WEATHER = _words("sunny rainy windy snowy cloudy warm cold foggy bright quiet")
TIMES = _words("morning afternoon evening day")
SOUNDS = _phrases("""the birds sang, the bees buzzed, the leaves rustled, the frogs croaked,
    the wind whistled, the dogs barked, the bells rang, the river splashed""")
# place, a spot to look in, three things to do there
PLACES = (
    ("the park", "under the slide", "play on the swings", "kick a ball", "feed the ducks"),
    ("the garden", "behind the flowers", "water the plants", "dig in the dirt", "pick tomatoes"),
    ("the beach", "in the sand", "look for shells", "splash in the waves", "dig a hole"),
    ("the forest", "under a big tree", "look for birds", "collect pinecones", "climb a log"),
    ("the farm", "near the barn", "feed the cows", "ride the pony", "collect eggs"),
    ("the lake", "by the water", "throw little stones", "sail a toy boat", "watch the fish"),
    ("the school", "in the yard", "draw with chalk", "play tag", "read a story"),
    ("the hill", "in the tall grass", "roll down the hill", "fly a kite", "watch the clouds"),
    ("the yard", "under the bench", "run and jump", "blow bubbles", "play hide and seek"),
    ("the zoo", "next to the gate", "watch the monkeys", "see the lions", "feed the goats"),
    ("the river", "near the bridge", "watch the boats", "catch frogs", "skip stones"),
    ("the town", "by the old shop", "buy some bread", "visit the market", "see the clock tower"),
    ("the meadow", "among the daisies", "pick flowers", "chase butterflies", "have a picnic"),
    ("the playground", "in the sandbox", "climb the ropes", "go down the slide", "play on the seesaw"),
    ("the pond", "near the rocks", "watch the frogs", "feed the swans", "look at the lily pads"),
    ("the library", "under a table", "read books", "find a story about dragons", "look at pictures"),
    ("the mountain", "behind a big rock", "walk up the path", "look at the view", "find pretty stones"),
    ("the kitchen", "under the table", "bake cookies", "help make soup", "wash the dishes"),
    ("the market", "behind a stall", "buy apples", "look at the toys", "smell the flowers"),
    ("the museum", "near the stairs", "see the dinosaur bones", "look at paintings", "find the old coins"),
    ("the circus", "behind the tent", "watch the clowns", "see the jugglers", "eat popcorn"),
    ("the woods", "in a hollow log", "find mushrooms", "follow the stream", "build a little fort"),
    ("the snow", "under the snow", "build a snowman", "go sledding", "make snow angels"),
    ("the castle", "in the old tower", "explore the halls", "look for the king", "play knights"),
)
DETAILS = (
    "It was a {weather} {time}.",
    "The sun was warm and bright.",
    "Outside, {sound}.",
    "The sky was {color} and clear.",
    "A soft wind blew.",
    "A {color} butterfly flew by.",
    "{name} saw a {trait} {animal} near the path.",
    "{name} ate some {food} on the way.",
    "There were many flowers everywhere.",
    "The clouds looked like big white sheep.",
    "{name} sang a little song.",
    "{name} skipped and hopped all the way.",
    "{He} wore {his} {color} {obj}.",
    "{He} brought {his} {adj} {obj} along.",
    "On the way, {he} waved to a {trait} {animal}.",
)


@dataclass(frozen=True)
class Character:
    name: str
    he: str  # "he" or "she"
    kind: str  # "little girl", "brave fox", ...

    @property
    def his(self) -> str:
        return "his" if self.he == "he" else "her"

    @property
    def him(self) -> str:
        return "him" if self.he == "he" else "her"

    @property
    def He(self) -> str:  # noqa: N802 - capitalised like the sentence it starts
        return self.he.capitalize()

    @property
    def His(self) -> str:  # noqa: N802
        return self.his.capitalize()


Place = tuple[str, str, str, str, str]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class StoryWriter:
    """Writes one story at a time from a seeded ``random.Random``; one method per plot."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def pick(self, *options: str) -> str:
        return self.r.choice(options)

    def character(self, avoid: str = "") -> Character:
        he = self.r.choice(("he", "she"))
        name = self.r.choice([n for n in (BOYS if he == "he" else GIRLS) if n != avoid])
        who = self.r.choice(ANIMALS) if self.r.random() < 0.35 else ("boy" if he == "he" else "girl")
        return Character(name, he, f"{self.r.choice(TRAITS)} {who}")

    def say(self, who: Character, line: str, pronoun: bool = False) -> str:
        """A line of dialogue, attributed in one of several ways (by pronoun only where unambiguous)."""
        if line.endswith("?"):
            verb = self.pick("asked", "asked", "wondered")
        elif line.endswith("!"):
            verb = self.pick("said", "shouted", "cried", "yelled", "exclaimed")
        else:
            verb = self.pick("said", "said", "replied", "whispered")
        inner = line[:-1] + "," if line.endswith(".") else line
        speaker = who.he if pronoun and self.r.random() < 0.5 else who.name
        return self.pick(
            f'"{inner}" {verb} {who.name}.', f'{who.name} {verb}, "{line}"', f'"{inner}" {speaker} {verb}.'
        )

    def detail(self, who: Character) -> str:
        """A sentence of colour; half the time nothing, so stories differ in length and rhythm."""
        if self.r.random() < 0.5:
            return ""
        r = self.r
        text = r.choice(DETAILS).format(
            name=who.name,
            he=who.he,
            He=who.He,
            his=who.his,
            color=r.choice(COLORS),
            trait=r.choice(TRAITS),
            animal=r.choice(ANIMALS),
            food=r.choice(FOODS),
            weather=r.choice(WEATHER),
            time=r.choice(TIMES),
            sound=r.choice(SOUNDS),
            obj=r.choice(OBJECTS),
            adj=r.choice(ADJECTIVES),
        )
        return " " + text

    def opening(self, h: Character) -> str:
        first = self.pick(
            f"Once upon a time, there was {_a(h.kind)} named {h.name}.",
            f"Once upon a time, there lived {_a(h.kind)} called {h.name}.",
            f"There was once {_a(h.kind)} named {h.name}.",
            f"{h.name} was {_a(h.kind)}.",
        )
        likes = self.pick(
            f"{h.He} loved to play outside.",
            f"{h.He} liked to sing and dance.",
            f"{h.He} had many friends.",
            f"{h.He} liked to eat {self.r.choice(FOODS)}.",
            f"{h.He} lived in a small house with {h.his} family.",
            f"{h.His} favorite color was {self.r.choice(COLORS)}.",
        )
        return f"{first} {likes}"

    # -- plots: the paragraphs after the opening ------------------------------------------------------

    def lost(self, h: Character, f: Character, place: Place) -> list[str]:
        obj, adj, color = self.r.choice(OBJECTS), self.r.choice(ADJECTIVES), self.r.choice(COLORS)
        return [
            f"{h.He} had {_a(adj)} {color} {obj}. {h.name} loved {h.his} {obj} very much.",
            f"One day, {h.name} took the {obj} to {place[0]} to {self.r.choice(place[2:])}.{self.detail(h)}"
            f" When it was time to go home, the {obj} was gone! {h.name} felt very {self.r.choice(BAD)}. "
            + self.say(h, f"Where is my {obj}?", True),
            f"{h.His} friend {f.name} came to help. "
            + self.say(f, self.pick("Do not worry. We will find it together.", "Let's look for it!"))
            + f" They looked and looked. At last, {f.name} saw something {color} {place[1]}. "
            f"It was the {obj}!",
            f"{h.name} hugged {f.name}. "
            + self.say(h, f"Thank you, {f.name}!")
            + self.pick(
                f" From that day on, {h.name} was careful with {h.his} {obj}.",
                f" They played with the {obj} until the sun went down.",
            ),
        ]

    def share(self, h: Character, f: Character, place: Place) -> list[str]:
        obj, adj = self.r.choice(OBJECTS), self.r.choice(ADJECTIVES)
        adult, ahe = self.r.choice(ADULTS)
        return [
            f"One day, {h.name} got {_a(adj)} {obj}. {h.He} played with it at {place[0]} all "
            f"{self.r.choice(TIMES)}.{self.detail(h)}",
            f"{f.name} came and saw the {obj}. "
            + self.say(f, f"Can I play with your {obj}, too?")
            + " "
            + self.say(h, f"No, it is my {obj}!")
            + f" {f.name} was {self.r.choice(BAD)} and walked away.",
            f"{h.name}'s {adult} saw what happened. {ahe.capitalize()} said, \"{h.name}, it is nice to "
            f'share. Your friend is sad." {h.name} thought about it. {h.He} did not want {f.name} to be sad.',
            f"{h.name} ran to {f.name} and gave {f.him} the {obj}. "
            + self.say(h, "We can play together.")
            + f" {f.name} smiled. They played with the {obj} all day, and they were both "
            f"{self.r.choice(GOOD)}. {h.name} learned that sharing makes everyone happy.",
        ]

    def fear(self, h: Character, f: Character, place: Place) -> list[str]:
        fear = self.r.choice(FEARS)
        return [
            f"{h.name} liked to go to {place[0]} to {self.r.choice(place[2:])}, but {h.he} was afraid of "
            f"{fear}. " + self.pick(f"{h.He} always ran home.", f"{h.He} did not like {fear} at all."),
            f'One day, {f.name} said, "Come with me, {h.name}. I will stay with you." '
            + self.say(h, "I am scared.")
            + " "
            + self.say(f, "It is okay to be scared. I am here."),
            f"{h.name} held {f.name}'s hand and took a big breath. {h.He} was brave.{self.detail(h)} "
            "It was not so bad after all! " + self.say(h, "That was fun!", True),
            f"From that day on, {h.name} was not afraid of {fear} anymore. {h.He} learned that being "
            "brave is worth it.",
        ]

    def rescue(self, h: Character, f: Character, place: Place) -> list[str]:
        animal, trouble = self.r.choice(ANIMALS), self.r.choice(TROUBLES)
        adult, ahe = self.r.choice(ADULTS)
        return [
            f"One {self.r.choice(WEATHER)} day, {h.name} went to {place[0]} to {self.r.choice(place[2:])}."
            f"{self.detail(h)} Then {h.he} saw a little {animal}. The {animal} {trouble}.",
            self.say(h, f"Poor little {animal}! I want to help you.")
            + f" {h.name} ran to get {h.his} {adult}. {ahe.capitalize()} came fast.",
            f"Together they helped the {animal}. "
            + self.pick("They gave it some water and a warm place to rest.", "They were very gentle with it.")
            + f" Soon the {animal} was fine. It looked at {h.name} and made a happy sound.",
            f"{h.name} felt {self.r.choice(GOOD)}. "
            + self.say(h, f"Bye, little {animal}!", True)
            + f" The {animal} came back to see {h.him} every day. {h.name} knew that it is good to help.",
        ]

    def build(self, h: Character, f: Character, place: Place) -> list[str]:
        thing, mishap = self.r.choice(MAKES), self.r.choice(MISHAPS)
        return [
            f"{h.name} and {h.his} friend {f.name} wanted to make {thing}. "
            + self.say(f, f"Let's make {thing} at {place[0]}!"),
            f"They worked hard all {self.r.choice(TIMES)}.{self.detail(h)} It was very big and very pretty. "
            f"But then {mishap}! {h.name} and {f.name} were {self.r.choice(BAD)}.",
            self.say(h, "Let's try again.")
            + " "
            + self.say(f, "Yes! We can do it.")
            + f" So they made {thing} again, and this time it was even better.",
            f"{h.name} and {f.name} were very proud. They learned that trying again makes you strong.",
        ]

    def surprise(self, h: Character, f: Character, place: Place) -> list[str]:
        box, inside, color = (
            self.pick("box", "bag", "chest", "basket"),
            self.r.choice(OBJECTS),
            self.r.choice(COLORS),
        )
        return [
            f"One {self.r.choice(TIMES)}, {h.name} went to {place[0]} with {f.name}.{self.detail(h)}",
            f"{place[1].capitalize()}, they found {_a(color)} {box}. "
            + self.say(f, f"What is in the {box}?")
            + " "
            + self.say(h, "Let's open it and see!"),
            f"They opened the {box} slowly. Inside, there was {_a(self.r.choice(ADJECTIVES))} {inside}! "
            f"{h.name} and {f.name} were very surprised.",
            self.pick(
                f"They took the {inside} home and showed it to their families.",
                f"They played with the {inside} together all day.",
            )
            + " It was the best day ever.",
        ]

    def race(self, h: Character, f: Character, place: Place) -> list[str]:
        return [
            f"{h.name} and {f.name} liked to race at {place[0]}. " + self.say(f, "Let's see who is faster!"),
            f"They ran and ran.{self.detail(h)} {h.name} was in front, but then {f.name} fell down and "
            f"hurt {f.his} knee.",
            f"{h.name} stopped and went back. "
            + self.say(h, "Are you okay?", True)
            + " "
            + self.say(f, "My knee hurts.")
            + f" {h.name} helped {f.name} get up, and they walked home.",
            f'{f.name} said, "Thank you. You are a good friend." {h.name} smiled. '
            "Helping a friend is better than winning a race.",
        ]

    def rain(self, h: Character, f: Character, place: Place) -> list[str]:
        adult, ahe = self.r.choice(ADULTS)
        food = self.r.choice(FOODS)
        return [
            f"{h.name} wanted to go to {place[0]} to {self.r.choice(place[2:])}. But when {h.he} looked out "
            "the window, it was raining. " + self.say(h, "Oh no! Now I cannot go outside."),
            f'{h.His} {adult} had an idea. {ahe.capitalize()} said, "Let\'s make something with {food}." '
            "So they mixed and cooked in the kitchen.",
            f"Then {f.name} came to visit, and they all ate together. " + self.say(f, "This is yummy!"),
            f"When the rain stopped, there was a big rainbow in the sky. {h.name} was {self.r.choice(GOOD)}. "
            "A rainy day can be fun, too.",
        ]

    def new_friend(self, h: Character, f: Character, place: Place) -> list[str]:
        return [
            f"{h.name} felt {self.r.choice(BAD)}. {h.He} had no one to play with at {place[0]}."
            + self.detail(h),
            f"Then {h.he} saw {_a(f.kind)} who was all alone, too. "
            + self.say(h, "Hello! What is your name?")
            + " "
            + self.say(f, f"My name is {f.name}. Do you want to {self.r.choice(place[2:])} with me?"),
            f"{h.name} and {f.name} played together until the sun went down. They laughed a lot.",
            f"From that day on, {h.name} and {f.name} were best friends. {h.name} was never alone again.",
        ]

    def birthday(self, h: Character, f: Character, place: Place) -> list[str]:
        obj, adj, food = self.r.choice(OBJECTS), self.r.choice(ADJECTIVES), self.r.choice(FOODS)
        return [
            f"Today was {h.name}'s birthday! {h.He} was very {self.r.choice(GOOD)}. There was a party at "
            f"{place[0]}, with balloons and {food}.",
            f"{f.name} came with a gift. "
            + self.say(f, "Happy birthday! This is for you.")
            + f" {h.name} opened it. It was {_a(adj)} {obj}!",
            self.say(h, f"I love it! Thank you, {f.name}!")
            + f" {h.name} played with the {obj} all day."
            + self.detail(h),
            f"At night, {h.name} went to bed with the {obj} next to {h.him}. It was the best birthday ever.",
        ]

    def story(self) -> str:
        hero = self.character()
        friend = self.character(avoid=hero.name)
        place = self.r.choice(PLACES)
        plots = (
            self.lost,
            self.share,
            self.fear,
            self.rescue,
            self.build,
            self.surprise,
            self.race,
            self.rain,
            self.new_friend,
            self.birthday,
        )
        return self.opening(hero) + " " + "\n".join(self.r.choice(plots)(hero, friend, place))


def generate_stories(n_stories: int, seed: int | str = 0) -> Iterator[str]:
    """``n_stories`` stories; the same (n, seed) always gives the same text."""
    writer = StoryWriter(random.Random(seed))
    for _ in range(n_stories):
        yield writer.story()


def write_corpus(path: str | os.PathLike, n_stories: int, seed: int | str = 0) -> Path:
    """Write stories separated by ``<|endoftext|>`` lines (TinyStories' layout), atomically."""
    if n_stories < 1:
        raise ValueError(f"n_stories={n_stories}: expected at least 1 story")
    path = Path(path)
    sweep_stale_temps(path.parent)  # the temporaries of runs killed while writing (a full disk's too)
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        for story in generate_stories(n_stories, seed):
            f.write(story + "\n" + EOT + "\n")
    return path


def unigram_entropy(counts: Iterable[int] | np.ndarray) -> float:
    """Entropy in bits of the distribution given by ``counts``: the loss (in bits) of a context-free model."""
    c = np.asarray(counts if isinstance(counts, np.ndarray) else list(counts), dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        raise ValueError("unigram_entropy: no symbols to count")
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def token_unigram_entropy(tokens: np.ndarray) -> float:
    """Bits per token of the tokens' own unigram distribution (a memory-mapped token array is fine)."""
    return unigram_entropy(np.bincount(np.asarray(tokens).ravel()))


def corpus_unigram_entropy(path: str | os.PathLike, tokenizer=None) -> float:
    """Unigram entropy of a text file: bits per token under ``tokenizer``, or bits per byte without one.

    A model's cross-entropy ``loss`` (nats per token) beats this baseline when ``loss / ln 2`` is lower.
    """
    if tokenizer is None:
        counts = np.zeros(256, dtype=np.int64)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                counts += np.bincount(np.frombuffer(chunk, dtype=np.uint8), minlength=256)
        return unigram_entropy(counts)
    with open(path, encoding="utf-8") as f:
        return unigram_entropy(Counter(tokenizer.encode_iterable(f)).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lit_llm.data.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="text file to write")
    parser.add_argument("--stories", type=int, default=20000, help="number of stories (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = write_corpus(args.out, args.stories, args.seed)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    bits = corpus_unigram_entropy(path)
    print(
        f"wrote {args.stories} stories, {path.stat().st_size:,} bytes to {path}; "
        f"byte unigram entropy {bits:.3f} bits"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
