package bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Joined;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The benchmark's Kafka Streams peer: feedback (a KStream) joined to predictions (a KTable).
 *
 * <p>Configured like the project's worker, from the environment: STREAMS_BOOTSTRAP_SERVERS,
 * STREAMS_TOPIC_PREFIX (reads {@code <prefix>predictions} and {@code <prefix>feedback}, writes
 * {@code <prefix>joined}), STREAMS_APP_ID (application.id) and STREAMS_DATA_DIR (state.dir).
 * JSON in and out (Jackson). The KTable is keyed by the Kafka key (join_key) and a joined
 * record is made only when the application matches, so the scope is (application, join_key).
 *
 * <p>What a KStream-KTable inner join does not do, and the benchmark counts as missing:
 * feedback processed before its prediction is dropped (no waiting), a duplicate feedback
 * record yields a second (identical-id) joined record, and each joined record carries only
 * its own feedback (revision 1, nothing merged).
 *
 * <p>The wall-clock ms of the first input record processed goes to
 * {@code STREAMS_DATA_DIR/first-read-ms}: the benchmark times every contender from its first
 * input read to its last joined record.
 */
public final class KStreamsJoin {
  /** The namespace of joined ids (streams/join.py); ids are UUIDv5 of application, key, event. */
  static final UUID JOINED_NAMESPACE = UUID.fromString("6f3c1a5e-9a43-4c1b-8d8e-2b7f0c1d4e21");

  private static final ObjectMapper MAPPER = new ObjectMapper();
  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
  private static final DateTimeFormatter RFC3339_MS =
      DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

  private KStreamsJoin() {}

  /** UUIDv5 (RFC 4122: SHA-1 of namespace and name); UUID.nameUUIDFromBytes is v3 (MD5). */
  static UUID uuid5(UUID namespace, String name) {
    MessageDigest sha1;
    try {
      sha1 = MessageDigest.getInstance("SHA-1");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
    ByteBuffer ns = ByteBuffer.allocate(16);
    ns.putLong(namespace.getMostSignificantBits()).putLong(namespace.getLeastSignificantBits());
    sha1.update(ns.array());
    byte[] hash = sha1.digest(name.getBytes(StandardCharsets.UTF_8));
    hash[6] = (byte) ((hash[6] & 0x0f) | 0x50);
    hash[8] = (byte) ((hash[8] & 0x3f) | 0x80);
    ByteBuffer bits = ByteBuffer.wrap(hash, 0, 16);
    return new UUID(bits.getLong(), bits.getLong());
  }

  static String joinedId(String application, String joinKey, String feedbackEventId) {
    return uuid5(JOINED_NAMESPACE, application + "\0" + joinKey + "\0" + feedbackEventId)
        .toString();
  }

  /** A joined/v1 record, or null when the application differs (no join across applications). */
  static JsonNode joined(JsonNode feedback, JsonNode prediction) {
    String application = feedback.path("application").asText();
    if (!application.equals(prediction.path("application").asText())) {
      return null;
    }
    String joinKey = feedback.path("join_key").asText();
    String feedbackId = feedback.path("event_id").asText();
    String now = RFC3339_MS.format(Instant.now());
    ObjectNode out = NODES.objectNode();
    out.put("schema", "joined/v1");
    out.put("id", joinedId(application, joinKey, feedbackId));
    out.put("application", application);
    out.put("join_key", joinKey);
    out.set("version", prediction.path("version").isMissingNode() ? NODES.nullNode()
        : prediction.get("version"));
    out.set("inputs", prediction.get("inputs"));
    out.set("outputs", prediction.get("outputs"));
    out.set("tags", prediction.has("tags") ? prediction.get("tags") : NODES.objectNode());
    out.put("prediction_event_id", prediction.path("event_id").asText());
    out.put("feedback_event_id", feedbackId);
    out.put("prediction_timestamp", prediction.path("timestamp").asText(now));
    out.put("feedback_timestamp", feedback.path("timestamp").asText(now));
    out.set("feedback", feedback.get("feedback"));
    out.put("feedback_revision", 1);
    out.put("joined_at", now);
    return out;
  }

  /** JSON values as Jackson trees; a record that is not JSON is skipped (logged) by Streams. */
  static Serde<JsonNode> jsonSerde() {
    Serializer<JsonNode> serializer =
        (topic, node) -> {
          try {
            return node == null ? null : MAPPER.writeValueAsBytes(node);
          } catch (IOException e) {
            throw new IllegalArgumentException(e);
          }
        };
    Deserializer<JsonNode> deserializer =
        (topic, bytes) -> {
          try {
            return bytes == null ? null : MAPPER.readTree(bytes);
          } catch (IOException e) {
            throw new IllegalArgumentException(e);
          }
        };
    return Serdes.serdeFrom(serializer, deserializer);
  }

  private static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  public static void main(String[] args) throws Exception {
    String prefix = env("STREAMS_TOPIC_PREFIX", "");
    Path dataDir = Path.of(env("STREAMS_DATA_DIR", "streams-data"));
    Files.createDirectories(dataDir);
    Path mark = dataDir.resolve("first-read-ms");
    AtomicBoolean marked = new AtomicBoolean(false);

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, env("STREAMS_APP_ID", "streams-kstreams"));
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG,
        env("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092"));
    props.put(StreamsConfig.STATE_DIR_CONFIG, dataDir.resolve("kstreams").toString());
    // Commit as often as the other contenders (each about once a second), not every 30 s.
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
    props.put(StreamsConfig.DEFAULT_DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG,
        LogAndContinueExceptionHandler.class);
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    // Streams members do not leave the group on close, so a restart would wait out the old
    // member's session (45 s). A static member can leave: close(leaveGroup) below.
    props.put(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG,
        props.get(StreamsConfig.APPLICATION_ID_CONFIG));

    Serde<String> keys = Serdes.String();
    Serde<JsonNode> json = jsonSerde();
    StreamsBuilder builder = new StreamsBuilder();
    KTable<String, JsonNode> predictions =
        builder.stream(prefix + "predictions", Consumed.with(keys, json))
            .peek((key, value) -> markFirstRead(marked, mark))
            .toTable(Materialized.<String, JsonNode, org.apache.kafka.streams.state.KeyValueStore<
                    org.apache.kafka.common.utils.Bytes, byte[]>>as("predictions")
                .withKeySerde(keys)
                .withValueSerde(json));
    builder.stream(prefix + "feedback", Consumed.with(keys, json))
        .peek((key, value) -> markFirstRead(marked, mark))
        .filter((key, value) -> value != null && value.has("feedback"))
        .join(predictions, KStreamsJoin::joined, Joined.with(keys, json, json))
        .filter((key, value) -> value != null)
        .to(prefix + "joined", Produced.with(keys, json));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close(
          new KafkaStreams.CloseOptions().leaveGroup(true).timeout(Duration.ofSeconds(30)));
      stopped.countDown();
    }, "shutdown"));
    streams.start();
    System.out.println("kstreams_started app_id=" + props.get(StreamsConfig.APPLICATION_ID_CONFIG));
    stopped.await();
  }

  private static void markFirstRead(AtomicBoolean marked, Path mark) {
    if (marked.get() || !marked.compareAndSet(false, true)) {
      return;
    }
    long now = System.currentTimeMillis();
    try {
      Path partial = mark.resolveSibling("first-read-ms.partial");
      Files.writeString(partial, Long.toString(now));
      Files.move(partial, mark, StandardCopyOption.ATOMIC_MOVE);
    } catch (IOException e) {
      throw new IllegalStateException("cannot write " + mark, e);
    }
  }
}
