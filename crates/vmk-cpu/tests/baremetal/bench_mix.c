/* Benchmark: a CoreMark-like integer mix (linked-list search and reversal, small matrix
 * multiply, a byte-driven state machine, CRC16), `iterations` times. Prints a checksum. */
#include "bm.h"

volatile uint64_t iterations = 200;

struct node {
    struct node *next;
    int16_t data, idx;
};

static struct node nodes[64];
static int32_t ma[16][16], mb[16][16], mc[16][16];
static uint8_t text[512];

static uint16_t crc16(uint16_t crc, uint32_t v)
{
    for (int i = 0; i < 32; i++) {
        uint16_t bit = (uint16_t)((crc ^ v) & 1);
        crc >>= 1;
        v >>= 1;
        if (bit)
            crc ^= 0xa001;
    }
    return crc;
}

static struct node *list_reverse(struct node *l)
{
    struct node *r = 0;
    while (l) {
        struct node *n = l->next;
        l->next = r;
        r = l;
        l = n;
    }
    return r;
}

static int list_find(struct node *l, int16_t v)
{
    int pos = 0;
    for (; l; l = l->next, pos++)
        if (l->data == v)
            return pos;
    return -1;
}

static uint32_t matrix(int32_t k)
{
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            int32_t s = 0;
            for (int x = 0; x < 16; x++)
                s += ma[i][x] * (mb[x][j] + k);
            mc[i][j] = s;
        }
    uint32_t h = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            h = h * 31 + (uint32_t)mc[i][j];
    return h;
}

/* states: 0 start, 1 int, 2 float, 3 exp, 4 invalid */
static uint32_t state_machine(void)
{
    uint32_t counts[5] = {0};
    int st = 0;
    for (unsigned i = 0; i < sizeof text; i++) {
        uint8_t c = text[i];
        if (c == ',') {
            counts[st]++;
            st = 0;
            continue;
        }
        switch (st) {
        case 0: st = (c >= '0' && c <= '9') ? 1 : (c == '.' ? 2 : 4); break;
        case 1: st = (c >= '0' && c <= '9') ? 1 : (c == '.' ? 2 : (c == 'e' ? 3 : 4)); break;
        case 2: st = (c >= '0' && c <= '9') ? 2 : (c == 'e' ? 3 : 4); break;
        case 3: st = (c >= '0' && c <= '9') ? 3 : 4; break;
        default: break;
        }
    }
    return counts[0] | counts[1] << 6 | counts[2] << 12 | counts[3] << 18 | counts[4] << 24;
}

int main(void)
{
    static const char alphabet[] = "0123456789.e,x";
    uint32_t seed = 12345;
    for (unsigned i = 0; i < sizeof text; i++) {
        seed = seed * 1103515245 + 12345;
        text[i] = (uint8_t)alphabet[(seed >> 16) % 14];
    }
    for (int i = 0; i < 64; i++) {
        nodes[i].next = i < 63 ? &nodes[i + 1] : 0;
        nodes[i].data = (int16_t)((i * 37) & 0xff);
        nodes[i].idx = (int16_t)i;
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            ma[i][j] = (i * 7 + j * 3) % 11 - 5;
            mb[i][j] = (i * 5 + j * 13) % 17 - 8;
        }
    struct node *l = nodes;
    uint16_t crc = 0;
    uint64_t n = iterations;
    for (uint64_t it = 0; it < n; it++) {
        int f = list_find(l, (int16_t)((it * 37) & 0xff));
        l = list_reverse(l);
        crc = crc16(crc, (uint32_t)f);
        crc = crc16(crc, matrix((int32_t)it));
        crc = crc16(crc, state_machine());
        text[it % sizeof text] = (uint8_t)alphabet[crc % 14];
    }
    printf("mix x%ld: crc=%04x\n", (long)n, crc);
    return failures;
}
