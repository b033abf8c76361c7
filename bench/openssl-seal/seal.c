/*
 * seal times one WireGuard-sized ChaCha20-Poly1305 seal (RFC 8439, empty
 * additional data) with OpenSSL's assembly in two ways:
 *
 *   evp  the public API, one context reused, new nonce per message: what a
 *        program linking libcrypto can call;
 *   raw  OpenSSL's internal primitives ChaCha20_ctr32 and Poly1305_*, linked
 *        from the static libcrypto.a (the shared library does not export
 *        them): its AVX-512 ChaCha20 and vector Poly1305 with no EVP layer.
 *
 * It answers one question of docs/benchmarks.md: does assembly at OpenSSL's
 * speed, called one packet at a time, make a packet's seal much cheaper than
 * x/crypto's? Before timing, it checks that raw's output equals evp's, so
 * both time the same work. A measurement tool, not part of the product.
 *
 * Build and run: make bench-crypto (or see bench/openssl-seal/run.sh).
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* OpenSSL internals (crypto/chacha/chacha_enc.c, include/crypto/poly1305.h). */
void ChaCha20_ctr32(unsigned char *out, const unsigned char *inp, size_t len,
                    const unsigned int key[8], const unsigned int counter[4]);
size_t Poly1305_ctx_size(void);
void Poly1305_Init(void *ctx, const unsigned char key[32]);
void Poly1305_Update(void *ctx, const unsigned char *inp, size_t len);
void Poly1305_Final(void *ctx, unsigned char mac[16]);

enum { TAG = 16, MAXLEN = 65536, ROUNDS = 5 };

static const unsigned char key_bytes[32] = {
	1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
	17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
};
static unsigned int key_words[8];
static unsigned char plain[MAXLEN], sealed[MAXLEN + TAG], check[MAXLEN + TAG];
static EVP_CIPHER_CTX *evp;
static void *poly;

/* WireGuard's nonce: four zero bytes, then the 64-bit counter, little endian. */
static void nonce_bytes(uint64_t counter, unsigned char nonce[12])
{
	memset(nonce, 0, 4);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] = (unsigned char)(counter >> (8 * i));
}

static void seal_evp(unsigned char *out, size_t n, uint64_t counter)
{
	unsigned char nonce[12];
	int len;

	nonce_bytes(counter, nonce);
	if (!EVP_EncryptInit_ex2(evp, NULL, NULL, nonce, NULL) ||
	    !EVP_EncryptUpdate(evp, out, &len, plain, (int)n) ||
	    !EVP_EncryptFinal_ex(evp, out + len, &len) ||
	    !EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_AEAD_GET_TAG, TAG, out + n)) {
		fprintf(stderr, "seal: EVP ChaCha20-Poly1305 failed\n");
		exit(1);
	}
}

/* RFC 8439 section 2.8: block 0 keys Poly1305, blocks 1.. encrypt. */
static void seal_raw(unsigned char *out, size_t n, uint64_t counter)
{
	static const unsigned char zeros[64], pad[16];
	unsigned int ctr[4] = { 0, 0, (unsigned int)counter, (unsigned int)(counter >> 32) };
	unsigned char otk[64], lengths[16] = { 0 };

	ChaCha20_ctr32(otk, zeros, sizeof otk, key_words, ctr);
	ctr[0] = 1;
	ChaCha20_ctr32(out, plain, n, key_words, ctr);
	Poly1305_Init(poly, otk);
	Poly1305_Update(poly, out, n);
	if (n % 16)
		Poly1305_Update(poly, pad, 16 - n % 16);
	for (int i = 0; i < 8; i++)
		lengths[8 + i] = (unsigned char)((uint64_t)n >> (8 * i));
	Poly1305_Update(poly, lengths, sizeof lengths);
	Poly1305_Final(poly, out + n);
}

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median over ROUNDS rounds of the mean ns per seal in each round. */
static double time_seal(void (*seal)(unsigned char *, size_t, uint64_t), size_t n)
{
	double per[ROUNDS];
	long iters = 200000000L / (long)(n + 500);

	for (int r = 0; r < ROUNDS; r++) {
		double t0 = now_ns();
		for (long i = 0; i < iters; i++)
			seal(sealed, n, (uint64_t)i);
		per[r] = (now_ns() - t0) / (double)iters;
	}
	qsort(per, ROUNDS, sizeof per[0], cmp_double);
	return per[ROUNDS / 2];
}

int main(int argc, char **argv)
{
	EVP_CIPHER *cipher;

	if (argc < 2) {
		fprintf(stderr, "usage: %s BYTES...\n", argv[0]);
		return 2;
	}
	for (int i = 0; i < 8; i++)
		key_words[i] = (unsigned int)key_bytes[4 * i] | (unsigned int)key_bytes[4 * i + 1] << 8 |
		               (unsigned int)key_bytes[4 * i + 2] << 16 | (unsigned int)key_bytes[4 * i + 3] << 24;
	for (size_t i = 0; i < sizeof plain; i++)
		plain[i] = (unsigned char)(i * 7 + 3);
	evp = EVP_CIPHER_CTX_new();
	cipher = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
	poly = malloc(Poly1305_ctx_size());
	if (!evp || !cipher || !poly || !EVP_EncryptInit_ex2(evp, cipher, key_bytes, NULL, NULL)) {
		fprintf(stderr, "seal: cannot set up OpenSSL's ChaCha20-Poly1305\n");
		return 1;
	}
	printf("OpenSSL %s, medians of %d rounds, ns per seal\n", OpenSSL_version(OPENSSL_VERSION), ROUNDS);
	for (int a = 1; a < argc; a++) {
		size_t n = strtoul(argv[a], NULL, 10);
		if (n == 0 || n > MAXLEN) {
			fprintf(stderr, "seal: %s is not a length in 1..%d\n", argv[a], MAXLEN);
			return 2;
		}
		for (uint64_t c = 0; c < 3; c++) {
			seal_evp(check, n, c << 33 | c);
			seal_raw(sealed, n, c << 33 | c);
			if (memcmp(check, sealed, n + TAG) != 0) {
				fprintf(stderr, "seal: raw and EVP disagree at %zu bytes\n", n);
				return 1;
			}
		}
		double e = time_seal(seal_evp, n), r = time_seal(seal_raw, n);
		printf("%6zu B  evp %7.0f ns (%.2f GB/s)  raw %7.0f ns (%.2f GB/s)\n", n, e, n / e, r, n / r);
	}
	return 0;
}
