"""Named class orders that the class-incremental literature reuses.

Note: "seed 1993" names different CIFAR-100 orders in different codebases
(PyCIL takes ``np.random.permutation(100)`` after ``np.random.seed(1993)``;
iCaRL-derived code uses the fixed list below), so results record the order
itself, not a seed.
"""
from __future__ import annotations

# The fixed CIFAR-100 order from the original iCaRL implementation, as carried
# verbatim by arthurdouillard/incremental_learning.pytorch
# (inclearn/lib/data/datasets.py, class iCIFAR100, "Taken from original iCaRL
# implementation") and reused by Continual-CLIP, PODNet, FeCAM, Avalanche's
# iCaRL reproduction and many CLIP continual-learning papers.
# A tuple so that no caller can reorder it in place.
ICARL_CIFAR100_ORDER: tuple[int, ...] = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15,
    94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67,
    69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73,
    1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21,
    60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64,
    98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
)


# CIFAR-100's class names in label order: the speed benchmark and the sweep's calibration use them as
# stand-in classes, since realistic name lengths decide where prompts are cut.
CIFAR100_CLASS_NAMES: tuple[str, ...] = tuple((
    "apple,aquarium fish,baby,bear,beaver,bed,bee,beetle,bicycle,bottle,bowl,boy,bridge,bus,butterfly,camel,"
    "can,castle,caterpillar,cattle,chair,chimpanzee,clock,cloud,cockroach,couch,crab,crocodile,cup,dinosaur,"
    "dolphin,elephant,flatfish,forest,fox,girl,hamster,house,kangaroo,keyboard,lamp,lawn mower,leopard,lion,"
    "lizard,lobster,man,maple tree,motorcycle,mountain,mouse,mushroom,oak tree,orange,orchid,otter,palm tree,"
    "pear,pickup truck,pine tree,plain,plate,poppy,porcupine,possum,rabbit,raccoon,ray,road,rocket,rose,sea,"
    "seal,shark,shrew,skunk,skyscraper,snail,snake,spider,squirrel,streetcar,sunflower,sweet pepper,table,"
    "tank,telephone,television,tiger,tractor,train,trout,tulip,turtle,wardrobe,whale,willow tree,wolf,woman,"
    "worm"
).split(","))
