// The partition the Kafka Java client gives each key: Utils.toPositive(Utils.murmur2(key)) % n,
// as its producer's partitioner does for a record with a key. Run as a single-file source:
//   java -cp '.kafka/jars/*' tests/data/KafkaPartitions.java 4 8 < keys-in-hex
// One key per input line (hex of its bytes); prints one line per key: its partition for
// each partition count given as an argument.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.HexFormat;
import org.apache.kafka.common.utils.Utils;

public class KafkaPartitions {
    public static void main(String[] args) throws Exception {
        int[] counts = new int[args.length];
        for (int i = 0; i < args.length; i++) {
            counts[i] = Integer.parseInt(args[i]);
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        StringBuilder out = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            byte[] key = HexFormat.of().parseHex(line.trim());
            int hash = Utils.toPositive(Utils.murmur2(key));
            for (int i = 0; i < counts.length; i++) {
                out.append(i == 0 ? "" : " ").append(hash % counts[i]);
            }
            out.append('\n');
        }
        System.out.print(out);
    }
}
