"""An attention encoder-decoder over tokens: the model and its checkpoint, nothing of the loop.

    encoder    letters [B, T] -> embedding -> bidirectional GRU/LSTM, one or more layers (packed by lengths)
               memory [B, T, 2 He] (zero past a row's length); the last layer's final forward and
               backward states, joined, make the decoder's first state:
               h = tanh(bridge [h_fwd; h_bwd]) (c likewise, LSTM)
    decoder    one step: previous phoneme -> embedding -> GRU/LSTM cell state s_t
    attention  multiplicative (Luong's "general"): score_ts = (W_a s_t) . m_s, softmax over the valid letters
               (the rest masked to -1e9), context c_t = sum_s a_ts m_s
    output     log_softmax(W_o tanh(W_c [s_t; c_t] + b_c) + b_o)  over the phoneme vocabulary

Why multiplicative and no input feeding: the decoder's recurrence reads only the previous phoneme, so with
teacher forcing the decoder RNN runs over the whole target in one fused call and every step's attention is
one batched matmul ([B, Ty, 2He] x [B, 2He, Tx]); projecting the query (W_a s_t, once a step) instead of
the memory keeps a decoder step's cost independent of the word's length. Additive attention would need
v . tanh(W s_t + U m_s) at every letter of every step. The step the exported decoder graph computes is
`step` below, the same arithmetic training used.

Dropout acts on the embeddings, the memory and the attentional vector; `eval()` turns it off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

SEQ2SEQ = "seq2seq"
CELLS = ("gru", "lstm")
MASKED = -1e9  # attention score of a padded letter: exp underflows to exactly 0 in float32

State = tuple[torch.Tensor, ...]  # (h,) or (h, c), each [1, B, hidden]


@dataclass
class Seq2SeqConfig:
    letters: list[str]  # input vocabulary, index = token id (0 is padding)
    phonemes: list[str]  # output vocabulary, index = token id (0 starts, 1 ends)
    cell: str = "gru"
    embedding: int = 64
    encoder_hidden: int = 256  # per direction
    encoder_layers: int = 1
    hidden: int = 256  # decoder
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r}: a sequence-to-sequence model takes {' or '.join(CELLS)}")
        sizes = (self.embedding, self.encoder_hidden, self.encoder_layers, self.hidden)
        if min(sizes) < 1 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"embedding {self.embedding}, encoder_hidden {self.encoder_hidden}, encoder_layers "
                f"{self.encoder_layers}, hidden {self.hidden} must be >= 1 and dropout {self.dropout} in "
                "[0, 1)"
            )

    @property
    def memory(self) -> int:
        return 2 * self.encoder_hidden

    def to_dict(self) -> dict:
        return asdict(self)


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        rnn = nn.GRU if config.cell == "gru" else nn.LSTM
        self.letter_embedding = nn.Embedding(len(config.letters), config.embedding, padding_idx=0)
        self.encoder = rnn(
            config.embedding,
            config.encoder_hidden,
            num_layers=config.encoder_layers,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )
        self.bridge = nn.Linear(config.memory, config.hidden)
        self.bridge_c = nn.Linear(config.memory, config.hidden) if config.cell == "lstm" else None
        self.phoneme_embedding = nn.Embedding(len(config.phonemes), config.embedding)
        self.decoder = rnn(config.embedding, config.hidden, batch_first=True)
        self.query = nn.Linear(config.hidden, config.memory, bias=False)
        self.combine = nn.Linear(config.hidden + config.memory, config.hidden)
        self.out = nn.Linear(config.hidden, len(config.phonemes))
        self.dropout = nn.Dropout(config.dropout)

    def encode(self, letters: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, State]:
        """letters int64 [B, T], lengths [B] -> memory [B, T, 2He] and the decoder's first state."""
        embedded = self.dropout(self.letter_embedding(letters))
        packed = pack_padded_sequence(embedded, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        output, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(output, batch_first=True, total_length=letters.shape[1])
        finals = final if isinstance(final, tuple) else (final,)
        bridges = (self.bridge, self.bridge_c) if self.bridge_c is not None else (self.bridge,)
        # final [2 layers, B, He]; the last layer's pair: forward ends at each row's last letter, backward
        # at its first.
        state = tuple(
            torch.tanh(bridge(torch.cat([f[-2], f[-1]], dim=-1))).unsqueeze(0)
            for bridge, f in zip(bridges, finals, strict=True)
        )
        return self.dropout(memory), state

    def attend(
        self, outputs: torch.Tensor, memory: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs [B, Ty, H] -> log-probabilities [B, Ty, V] and attention weights [B, Ty, Tx]."""
        scores = torch.bmm(self.query(outputs), memory.transpose(1, 2))
        padded = torch.arange(memory.shape[1], device=memory.device)[None, :] >= lengths[:, None]
        weights = torch.softmax(scores.masked_fill(padded[:, None, :], MASKED), dim=-1)
        context = torch.bmm(weights, memory)
        attentional = torch.tanh(self.combine(torch.cat([outputs, context], dim=-1)))
        return torch.log_softmax(self.out(self.dropout(attentional)), dim=-1), weights

    def forward(self, letters: torch.Tensor, lengths: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: previous [B, Ty] (start token, then the reference) -> log-probs [B, Ty, V]."""
        memory, state = self.encode(letters, lengths)
        outputs, _ = self.decoder(self.dropout(self.phoneme_embedding(previous)), _hx(state))
        return self.attend(outputs, memory, lengths)[0]

    def step(
        self, previous: torch.Tensor, state: State, memory: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One decoder step: previous [B] -> log-probs [B, V], the new state, attention weights [B, Tx]."""
        output, new = self.decoder(self.phoneme_embedding(previous)[:, None, :], _hx(state))
        log_probs, weights = self.attend(output, memory, lengths)
        return log_probs[:, 0], new if isinstance(new, tuple) else (new,), weights[:, 0]


def _hx(state: State) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """nn.GRU takes h, nn.LSTM the pair (h, c)."""
    return state[0] if len(state) == 1 else (state[0], state[1])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_payload(model: Seq2Seq, extra: dict | None = None) -> dict:
    """What `checkpoint.pt` holds: tensors and plain values only, so `weights_only=True` loads it."""
    return {
        "format": "seqserve.checkpoint/1",
        "kind": SEQ2SEQ,
        "config": model.config.to_dict(),
        "labels": list(model.config.phonemes),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }


def from_payload(payload: dict) -> Seq2Seq:
    model = Seq2Seq(Seq2SeqConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
