"""The frozen CLIP bundle and the prompt building blocks strategies share."""
