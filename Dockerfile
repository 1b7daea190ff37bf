# The streams worker and command line: `docker compose up` runs Kafka, topic set-up and
# two workers from this image. Build context: the repository root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the wheel is built from: the package and its schemas (shipped inside it).
WORKDIR /tmp/build
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY schemas/ schemas/
# The project alone: no test or lint extras in the image.
RUN pip install . && rm -rf /tmp/build

# Run as a user of its own; its state (RocksDB) lives under /var/lib/streams, which a
# volume mounted there inherits the ownership of.
RUN useradd --create-home --uid 10001 --user-group streams \
    && mkdir -p /var/lib/streams \
    && chown streams:streams /var/lib/streams
USER streams
WORKDIR /home/streams
ENV STREAMS_DATA_DIR=/var/lib/streams

EXPOSE 6066
ENTRYPOINT ["streams"]
CMD ["worker"]
