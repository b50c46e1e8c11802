"""CharLanguageModel: a character-level recurrent language model, and nothing else.

It is a token embedding in front of a many-to-many `SequenceClassifier` whose classes are the vocabulary:
the class at step t is the character at step t + 1. So the exporter reuses the classifier's graph with one
Gather in front, and everything that holds for a many-to-many model (chunked = whole, mixed-length batches)
holds here:

    x          = embedding[tokens]                      [B, T, E]
    logits, h  = SequenceClassifier(x, lengths, h0)     [B, T, vocabulary]

The body's input standardisation stays at mean 0, std 1: an embedding learns its own scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from seqserve.contract import LANGUAGE_MODEL
from seqserve.training.model import ModelConfig, SequenceClassifier, State

CHECKPOINT_KIND = LANGUAGE_MODEL  # payload["kind"] of a language model's checkpoint.pt


@dataclass(frozen=True)
class LanguageModelConfig:
    """Plain values that rebuild the model; stored in the checkpoint beside the state dict."""

    cell: str
    vocabulary: int  # number of distinct characters; token ids are 0 .. vocabulary - 1
    embedding: int = 64
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.vocabulary < 2 or self.embedding < 1:
            raise ValueError(
                f"need vocabulary >= 2 and embedding >= 1; got {self.vocabulary}, {self.embedding}"
            )
        self.body_config()  # validates cell, hidden, layers, dropout

    # What the exporter and model.json read off any model's config.
    task = LANGUAGE_MODEL
    bidirectional = False
    features = 1  # one token id per step

    @property
    def classes(self) -> int:
        return self.vocabulary

    @property
    def directions(self) -> int:
        return 1

    def body_config(self) -> ModelConfig:
        return ModelConfig(
            cell=self.cell,
            features=self.embedding,
            classes=self.vocabulary,
            task="many_to_many",
            hidden=self.hidden,
            layers=self.layers,
            dropout=self.dropout,
            layer_norm=self.layer_norm,
        )

    def to_dict(self) -> dict:
        return asdict(self)


class CharLanguageModel(nn.Module):
    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocabulary, config.embedding)
        self.body = SequenceClassifier(config.body_config())

    def initial_state(self, batch: int) -> State:
        return self.body.initial_state(batch)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """tokens int64 [B, T], lengths [B] (>= 1); logits [B, T, vocabulary] and the state at each row's
        last valid step."""
        return self.body(self.embedding(tokens), lengths, state)


def checkpoint_payload(model: CharLanguageModel, vocabulary: list[str], extra: dict | None = None) -> dict:
    """What `checkpoint.pt` holds: tensors and plain values only, so `weights_only=True` loads it."""
    return {
        "format": "seqserve.checkpoint/1",
        "kind": CHECKPOINT_KIND,
        "config": model.config.to_dict(),
        "labels": list(vocabulary),  # the class at a step is the next character
        "vocabulary": list(vocabulary),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }


def from_payload(payload: dict) -> CharLanguageModel:
    """Rebuild a language model (eval mode) from a loaded checkpoint payload."""
    model = CharLanguageModel(LanguageModelConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model


@torch.no_grad()
def greedy_text(model: CharLanguageModel, vocabulary: list[str], prompt: str, tokens: int) -> str:
    """The reference generation loop: the prompt as one chunk, then the most likely character, one at a time.

    The server's greedy generation must equal this, character for character (tests/service)."""
    index = {char: i for i, char in enumerate(vocabulary)}
    ids = torch.tensor([[index[char] for char in prompt]])
    logits, state = model(ids, torch.tensor([ids.shape[1]]))
    out = []
    for _ in range(tokens):
        token = int(logits[0, -1].argmax())
        out.append(vocabulary[token])
        logits, state = model(torch.tensor([[token]]), torch.tensor([1]), state)
    return "".join(out)
