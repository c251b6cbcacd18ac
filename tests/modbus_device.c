/* A Modbus TCP device on libmodbus, not pymodbus: tests talk to a stack other than their
 * client's. Serves 10,000 coils, discrete inputs, holding and input registers (all zero) on
 * 127.0.0.1:PORT to any unit id, says "listening" on stderr once it does, and prints one line
 * per request on stdout, before it answers (so the line is written when the client has its
 * answer):
 *
 *     <function code> <address> <count> <CLOCK_MONOTONIC seconds when the request arrived>
 *
 * (count is the value for functions 5 and 6). CLOCK_MONOTONIC is Python's time.monotonic() on
 * Linux, so a test can order the device's requests against its own events. Each FROM-TO pair
 * after the port is a range of register addresses (holding and input) the device refuses with
 * exception 02, illegal data address, as a device with holes in its map does.
 *
 * Build: gcc -O2 -o modbus_device modbus_device.c $(pkg-config --cflags --libs libmodbus)
 */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TABLE_SIZE 10000
#define MAX_REFUSED 32

static int refused_from[MAX_REFUSED], refused_to[MAX_REFUSED], refused_n;

static double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Does a register read of [address, address + count) touch a refused range? */
static int refused(int address, int count) {
    for (int i = 0; i < refused_n; i++)
        if (address <= refused_to[i] && refused_from[i] < address + count) return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [FROM-TO]...\n", argv[0]);
        return 2;
    }
    for (int i = 2; i < argc && refused_n < MAX_REFUSED; i++)
        if (sscanf(argv[i], "%d-%d", &refused_from[refused_n], &refused_to[refused_n]) == 2)
            refused_n++;
    setvbuf(stdout, NULL, _IOLBF, 0);
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    modbus_mapping_t *map = modbus_mapping_new(TABLE_SIZE, TABLE_SIZE, TABLE_SIZE, TABLE_SIZE);
    int server = ctx && map ? modbus_tcp_listen(ctx, 8) : -1;
    if (server < 0) {
        fprintf(stderr, "cannot listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    fprintf(stderr, "listening\n");
    int header = modbus_get_header_length(ctx);
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    fd_set all;
    FD_ZERO(&all);
    FD_SET(server, &all);
    int max_fd = server;
    for (;;) {
        fd_set ready = all;
        if (select(max_fd + 1, &ready, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        for (int fd = 0; fd <= max_fd; fd++) {
            if (!FD_ISSET(fd, &ready)) continue;
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client >= 0) {
                    FD_SET(client, &all);
                    if (client > max_fd) max_fd = client;
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int length = modbus_receive(ctx, query);
            if (length < 0) { /* closed by the client, or a broken frame: drop the connection */
                close(fd);
                FD_CLR(fd, &all);
                continue;
            }
            if (length == 0) continue;
            double arrived_s = monotonic_s();
            int function = query[header];
            int address = (query[header + 1] << 8) | query[header + 2];
            int count = (query[header + 3] << 8) | query[header + 4];
            printf("%d %d %d %.9f\n", function, address, count, arrived_s);
            if ((function == 3 || function == 4) && refused(address, count))
                modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
            else
                modbus_reply(ctx, query, length, map);
        }
    }
}
