import os

from fastapi import FastAPI

from asgi_llm_guard import DualCache, LLMHookMiddleware
from asgi_llm_guard.contrib import ParallelRequestLimiter, PrometheusObserver  # [redis,prometheus] extras

observer = PrometheusObserver()
cache = DualCache(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_failure="closed")
limiter = ParallelRequestLimiter(max_parallel_requests=5, rpm_limit=60, tpm_limit=50_000, per="key", observer=observer)

app = FastAPI()
app.add_middleware(LLMHookMiddleware, hooks=[limiter], cache=cache, observer=observer)
app.mount("/metrics", observer.metrics_app())  # any path you choose
