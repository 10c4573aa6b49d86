"""`ServeConfig`: the knobs of `livo serve` (documented once, in docs/serving.md, "Server")."""

from __future__ import annotations

from pydantic import Field

from livo.config import LivoConfig
from livo.retriever import RetrievalOptions


class ServeConfig(LivoConfig):
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 inside a KServe InferenceService pod")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port (KServe's default 8080)")
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                   description="name on the routes (/v1/models/<name>:predict); default: the "
                                               "registered model's name")
    max_images_per_request: int = Field(4, ge=1, le=64,
                                        description="bound on prompts x num_images in one request (compare's base "
                                                    "images come on top)")
    max_prompt_chars: int = Field(1000, ge=1, description="longer prompts are refused with HTTP 400")
    queue_size: int = Field(16, ge=1, description="requests waiting for the worker; beyond it: HTTP 503 + Retry-After")
    batch_size: int = Field(4, ge=1, description="requests the worker takes into one generator call at most")
    batch_window_ms: float = Field(10.0, ge=0, description="how long the worker waits to fill a batch after the "
                                                            "first request arrives")
    num_inference_steps: int | None = Field(None, gt=0, description="sampler steps; default: the model's preset")
    guidance_scale: float | None = Field(None, ge=0, description="CFG scale; default: the model's preset")
    inference_dropout: float | None = Field(None, ge=0, le=1,
                                            description="share of a request's images made without the value token; "
                                                        "None = each principle's own (0.5 for bias principles)")
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions,
                                        description="how principle 'auto' is decided: retrieval.min_confidence "
                                                    "withholds a doubtful principle (no value token)")
    semantic_retrieval: bool | None = Field(None, description="the retriever's sentence-model stage; None = on when "
                                                              "its model is installed")

