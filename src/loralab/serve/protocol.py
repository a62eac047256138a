"""Request and response bodies of the OpenAI-compatible API (shared by server and clients).

The fields are OpenAI's (and vLLM's for the LoRA endpoints); loralab adds four, all
optional: `strength` (scales the adapter named by `model`), `adapters` (a composition of
several adapters with weights, e.g. [{"name": "sport", "weight": 0.7}, ...]), `rag`
(retrieval from an index the server opened with `--rag NAME=DIR`: {"index": NAME, "k": 3};
chat requests only) and, in responses, `route` (the router's choice when `model` is "auto")
and `rag` (the index, k and the source ids of the passages put into the prompt). Unknown request fields
are ignored, as OpenAI-compatible servers do; wrong types are a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AdapterWeight(_In):
    name: str
    weight: float = Field(1.0, ge=-4.0, le=4.0)


class RagOptions(_In):
    index: str  # a name given to `loralab serve --rag NAME=DIR`
    k: int = Field(3, ge=0, le=32)  # passages put into the prompt (0: no retrieval)
    mode: Literal["dense", "hybrid"] = "dense"  # hybrid: dense and BM25 fused by reciprocal rank


class TextPart(_In):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_In):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_In):
    include_usage: StrictBool = False


class _Sampling(_In):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: StrictBool = False  # JSON true/false only: "yes" or 1 is a 400, not a guess
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)  # what the sampler's generator takes
    strength: float = Field(1.0, ge=-4.0, le=4.0)
    adapters: Optional[list[AdapterWeight]] = None
    rag: Optional[RagOptions] = None
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and (len(v) > 8 or any(not s for s in v)):
            raise ValueError("at most 8 non-empty stop strings")
        return v


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
    max_tokens: Optional[int] = Field(16, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: StrictBool = False

    @field_validator("echo")
    @classmethod
    def _echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v


class LoadLoraRequest(_In):
    """vLLM's body for /v1/load_lora_adapter."""
    lora_name: str
    lora_path: Optional[str] = None


class UnloadLoraRequest(_In):
    """vLLM's body for /v1/unload_lora_adapter."""
    lora_name: str
    lora_int_id: Optional[int] = None


# ------------------------------------------------------------------ responses

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    route: Optional[dict[str, Any]] = None
    rag: Optional[dict[str, Any]] = None


class Delta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
    route: Optional[dict[str, Any]] = None
    rag: Optional[dict[str, Any]] = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: Optional[list[dict[str, float]]] = None
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    route: Optional[dict[str, Any]] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loralab"
    root: Optional[str] = None
    parent: Optional[str] = None
    meta: Optional[dict[str, Any]] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
