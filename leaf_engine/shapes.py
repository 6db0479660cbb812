"""Names for tensor shapes used in comments and annotations.

B batch, T sequence length, D hidden size, V vocabulary, R selected rows (response
positions gathered across the batch), N scored context tokens of one example.
"""

from __future__ import annotations

from typing import Annotated

import torch

BTD = Annotated[torch.Tensor, "B T D"]
BT = Annotated[torch.Tensor, "B T"]
RD = Annotated[torch.Tensor, "R D"]
RV = Annotated[torch.Tensor, "R V"]
R = Annotated[torch.Tensor, "R"]
